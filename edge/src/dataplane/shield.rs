//! The flood shield's pinned maps, as the daemon writes and reads them (issue 6): the settings
//! (`SV_SHIELD_CFG`), the blocklist (`SV_BLOCK`), the allowlist (`SV_ALLOW`) and the event ring
//! (`SV_SHIELD_EVT`). Opened from the pins, so it works for a loaded or an adopted data plane.
use std::path::Path;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, RingBuf};
use sipveil_abi::maps;
use sipveil_abi::shield::{
    AllowData, AllowEntry, BlockEntry, ShieldConfig, ShieldEvent, SourceKey,
};

use super::loader::DataplaneError;

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map {
        name,
        source: Box::new(source),
    }
}

fn open(dir: &Path, name: &'static str) -> Result<MapData, DataplaneError> {
    MapData::from_pin(dir.join(name)).map_err(map_err(name))
}

/// Handles on the shield's pinned maps.
pub struct ShieldMaps {
    config: Array<MapData, ShieldConfig>,
    block: HashMap<MapData, SourceKey, BlockEntry>,
    allow: LpmTrie<MapData, AllowData, AllowEntry>,
    events: RingBuf<MapData>,
}

impl ShieldMaps {
    /// Opens the maps pinned in `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<ShieldMaps, DataplaneError> {
        Ok(ShieldMaps {
            config: Array::try_from(Map::Array(open(pin_dir, maps::SHIELD_CONFIG)?))
                .map_err(map_err(maps::SHIELD_CONFIG))?,
            block: HashMap::try_from(Map::HashMap(open(pin_dir, maps::SHIELD_BLOCK)?))
                .map_err(map_err(maps::SHIELD_BLOCK))?,
            allow: LpmTrie::try_from(Map::LpmTrie(open(pin_dir, maps::SHIELD_ALLOW)?))
                .map_err(map_err(maps::SHIELD_ALLOW))?,
            events: RingBuf::try_from(Map::RingBuf(open(pin_dir, maps::SHIELD_EVENTS)?))
                .map_err(map_err(maps::SHIELD_EVENTS))?,
        })
    }

    /// Writes the settings (applied by the program from its next packet on).
    pub fn write_config(&mut self, cfg: &ShieldConfig) -> Result<(), DataplaneError> {
        self.config
            .set(0, *cfg, 0)
            .map_err(map_err(maps::SHIELD_CONFIG))
    }

    pub fn set_block(&mut self, key: SourceKey, entry: BlockEntry) -> Result<(), DataplaneError> {
        self.block
            .insert(key, entry, 0)
            .map_err(map_err(maps::SHIELD_BLOCK))
    }

    /// Removes a block; a missing entry is not an error.
    pub fn remove_block(&mut self, key: &SourceKey) -> Result<(), DataplaneError> {
        match self.block.remove(key) {
            Ok(()) | Err(aya::maps::MapError::ElementNotFound) => Ok(()),
            Err(e) => Err(map_err(maps::SHIELD_BLOCK)(e)),
        }
    }

    /// The blocklist as the program sees it.
    pub fn blocks(&self) -> Vec<(SourceKey, BlockEntry)> {
        self.block.iter().filter_map(Result::ok).collect()
    }

    /// Allowlists `data` with an address prefix of `addr_bits`.
    pub fn set_allow(
        &mut self,
        data: AllowData,
        addr_bits: u32,
        entry: AllowEntry,
    ) -> Result<(), DataplaneError> {
        let key = Key::new(AllowData::prefix_len(addr_bits), data);
        self.allow
            .insert(&key, entry, 0)
            .map_err(map_err(maps::SHIELD_ALLOW))
    }

    /// Removes an allowlist entry; a missing entry is not an error.
    pub fn remove_allow(&mut self, data: AllowData, addr_bits: u32) -> Result<(), DataplaneError> {
        let key = Key::new(AllowData::prefix_len(addr_bits), data);
        match self.allow.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::ElementNotFound) => Ok(()),
            Err(e) => Err(map_err(maps::SHIELD_ALLOW)(e)),
        }
    }

    /// Reads up to `max` pending events.
    pub fn drain_events(&mut self, max: usize, out: &mut Vec<ShieldEvent>) {
        for _ in 0..max {
            let Some(item) = self.events.next() else {
                break;
            };
            if item.len() >= size_of::<ShieldEvent>() {
                // SAFETY: the record holds at least one ShieldEvent written by the program;
                // read_unaligned copies it without assuming the ring's alignment.
                let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ShieldEvent>()) };
                out.push(ev);
            }
        }
    }
}
