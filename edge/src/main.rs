fn main() {
    println!(
        "entry object: {} bytes, lab object: {} bytes",
        sipveil_edge::dataplane::objects::ENTRY_OBJECT.len(),
        sipveil_edge::dataplane::objects::LAB_OBJECT.len()
    );
}
