//! The path trie's two kernel maps: a node whose component is at most `SHORT_NAME_BYTES`
//! long is keyed in AG_FILE_NODES_SHORT (a 32-byte key, which the kernel hashes on every
//! lookup in a fraction of the time of the 264-byte one), any other in AG_FILE_NODES. The
//! compiler and everything above it see one trie of `FileNodeKey`s.
use agent_guard_common::{FileNode, FileNodeKey, FileNodeShortKey};
use aya::maps::{HashMap, MapData, MapError};

pub struct FileTrie {
    pub long: HashMap<MapData, FileNodeKey, FileNode>,
    pub short: HashMap<MapData, FileNodeShortKey, FileNode>,
}

impl FileTrie {
    pub fn insert(&mut self, k: &FileNodeKey, v: &FileNode, flags: u64) -> Result<(), MapError> {
        match k.short() {
            Some(s) => self.short.insert(s, v, flags),
            None => self.long.insert(k, v, flags),
        }
    }

    pub fn get(&self, k: &FileNodeKey, flags: u64) -> Result<FileNode, MapError> {
        match k.short() {
            Some(s) => self.short.get(&s, flags),
            None => self.long.get(k, flags),
        }
    }

    pub fn remove(&mut self, k: &FileNodeKey) -> Result<(), MapError> {
        match k.short() {
            Some(s) => self.short.remove(&s),
            None => self.long.remove(k),
        }
    }

    /// Every key of both maps.
    pub fn keys(&self) -> Vec<FileNodeKey> {
        let long = self.long.keys().flatten();
        long.chain(self.short.keys().flatten().map(|s| s.long())).collect()
    }
}

#[cfg(test)]
mod tests {
    use agent_guard_common::{FileNodeKey, NAME_BYTES, SHORT_NAME_BYTES};

    fn key(name: &str) -> FileNodeKey {
        let mut n = [0u8; NAME_BYTES];
        n[..name.len()].copy_from_slice(name.as_bytes());
        FileNodeKey { ruleset: 3, parent: 9, name: n }
    }

    #[test]
    fn components_up_to_the_short_length_get_the_short_key_and_back() {
        let fits = "a".repeat(SHORT_NAME_BYTES);
        let s = key(&fits).short().expect("fits");
        assert_eq!((s.ruleset, s.parent, &s.name[..]), (3, 9, fits.as_bytes()));
        assert_eq!(s.long(), key(&fits));
        assert!(key(&"a".repeat(SHORT_NAME_BYTES + 1)).short().is_none());
        assert_eq!(key("usr").short().unwrap().long(), key("usr"));
    }
}
