//! Relay port allocation: (even RTP, odd RTCP) pairs from a configured range, one allocator per edge
//! address.

/// Allocates even ports `p` with `p + 1` also in the range. Hands ports out round-robin so a port
/// just released is not immediately reused (late packets of the old call do not leak into the new
/// one).
#[derive(Clone, Debug)]
pub struct PortAllocator {
    min: u16,
    used: Vec<bool>,
    next: usize,
    in_use: usize,
}

impl PortAllocator {
    /// `min` is rounded up to even; pairs whose odd port exceeds `max` are left out.
    pub fn new(min: u16, max: u16) -> PortAllocator {
        let min = min.saturating_add(min % 2);
        let pairs = if max > min {
            (usize::from(max) - usize::from(min)).div_ceil(2)
        } else {
            0
        };
        PortAllocator {
            min,
            used: vec![false; pairs],
            next: 0,
            in_use: 0,
        }
    }

    /// Number of pairs in the range.
    pub fn capacity(&self) -> usize {
        self.used.len()
    }

    /// Pairs currently handed out or reserved.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    fn index(&self, port: u16) -> Option<usize> {
        if port < self.min || !port.is_multiple_of(2) {
            return None;
        }
        let i = usize::from((port - self.min) / 2);
        (i < self.used.len()).then_some(i)
    }

    fn port(&self, i: usize) -> u16 {
        // i < used.len() <= 32768, so the sum stays within the configured u16 range.
        self.min + (i as u16) * 2
    }

    /// The next free even port, or `None` when the range is exhausted.
    pub fn allocate(&mut self) -> Option<u16> {
        let n = self.used.len();
        for step in 0..n {
            let i = (self.next + step) % n;
            if !self.used[i] {
                self.used[i] = true;
                self.in_use += 1;
                self.next = (i + 1) % n;
                return Some(self.port(i));
            }
        }
        None
    }

    /// Marks `port` (even, in range) as used; false when it is out of range or already used.
    pub fn reserve(&mut self, port: u16) -> bool {
        match self.index(port) {
            Some(i) if !self.used[i] => {
                self.used[i] = true;
                self.in_use += 1;
                true
            }
            _ => false,
        }
    }

    /// Returns `port` to the pool; false when it was not in use.
    pub fn release(&mut self, port: u16) -> bool {
        match self.index(port) {
            Some(i) if self.used[i] => {
                self.used[i] = false;
                self.in_use -= 1;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_even_ports_until_exhausted() {
        let mut a = PortAllocator::new(30000, 30007);
        assert_eq!(a.capacity(), 4);
        let got: Vec<u16> = (0..4).filter_map(|_| a.allocate()).collect();
        assert_eq!(got, vec![30000, 30002, 30004, 30006]);
        assert_eq!(a.allocate(), None);
        assert_eq!(a.in_use(), 4);
    }

    #[test]
    fn odd_max_and_odd_min() {
        // 30006 has no room for its RTCP port 30007.
        let mut a = PortAllocator::new(30001, 30006);
        assert_eq!(a.capacity(), 2);
        assert_eq!(a.allocate(), Some(30002));
        assert_eq!(a.allocate(), Some(30004));
        assert_eq!(a.allocate(), None);
        assert_eq!(PortAllocator::new(30000, 30000).capacity(), 0);
        assert_eq!(PortAllocator::new(65534, 65535).capacity(), 1);
    }

    #[test]
    fn release_is_reused_only_after_the_others() {
        let mut a = PortAllocator::new(100, 107);
        let p0 = a.allocate().expect("first");
        let _p1 = a.allocate().expect("second");
        assert!(a.release(p0));
        assert!(!a.release(p0), "double release");
        assert_eq!(a.allocate(), Some(104));
        assert_eq!(a.allocate(), Some(106));
        assert_eq!(a.allocate(), Some(100), "wraps to the released port");
        assert_eq!(a.allocate(), None);
    }

    #[test]
    fn reserve_for_rebuild() {
        let mut a = PortAllocator::new(100, 107);
        assert!(a.reserve(102));
        assert!(!a.reserve(102), "already reserved");
        assert!(!a.reserve(103), "odd");
        assert!(!a.reserve(108), "out of range");
        assert!(!a.reserve(98), "below range");
        let got: Vec<u16> = (0..3).filter_map(|_| a.allocate()).collect();
        assert_eq!(got, vec![100, 104, 106]);
        assert_eq!(a.allocate(), None);
    }
}
