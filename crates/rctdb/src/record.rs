//! The 24-byte header every record of a clustered database carries in front of its data
//! (DESIGN §8.1). Same layout as CTDB's `struct ctdb_ltdb_header`, host byte order, so
//! Samba's `ltdbtool dump` reads our files.

pub type Pnn = u32;

pub const HEADER_LEN: usize = 24;

/// The record left a node with data: copies may exist elsewhere, so an empty record
/// cannot simply be dropped.
pub const FLAG_MIGRATED_WITH_DATA: u32 = 0x0001_0000;
pub const FLAG_VACUUM_MIGRATED: u32 = 0x0002_0000;
/// A made-up header for a key that has no record; never written to disk.
pub const FLAG_AUTOMATIC: u32 = 0x0004_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordHeader {
    pub rsn: u64,
    pub dmaster: Pnn,
    pub flags: u32,
}

impl RecordHeader {
    /// The header of a key nobody has stored yet: its LMASTER is its first DMASTER.
    pub fn initial(lmaster: Pnn) -> RecordHeader {
        RecordHeader { rsn: 0, dmaster: lmaster, flags: FLAG_AUTOMATIC }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&self.rsn.to_ne_bytes());
        out[8..12].copy_from_slice(&self.dmaster.to_ne_bytes());
        // bytes 12..16 are CTDB's `reserved1`, 20..24 padding: both stay zero.
        out[16..20].copy_from_slice(&self.flags.to_ne_bytes());
        out
    }

    /// Splits a stored value into header and data; `None` when it is too short to carry a
    /// header, which the store rules treat as an absent record.
    pub fn decode(value: &[u8]) -> Option<(RecordHeader, &[u8])> {
        if value.len() < HEADER_LEN {
            return None;
        }
        let u32_at = |at: usize| u32::from_ne_bytes([value[at], value[at + 1], value[at + 2], value[at + 3]]);
        let mut rsn = [0u8; 8];
        rsn.copy_from_slice(&value[0..8]);
        let header = RecordHeader { rsn: u64::from_ne_bytes(rsn), dmaster: u32_at(8), flags: u32_at(16) };
        Some((header, &value[HEADER_LEN..]))
    }

    /// Header followed by data: the value written to the local tdb as one store.
    pub fn with_data(&self, data: &[u8]) -> Vec<u8> {
        let mut value = Vec::with_capacity(HEADER_LEN + data.len());
        value.extend_from_slice(&self.encode());
        value.extend_from_slice(data);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_with_data() {
        let header = RecordHeader { rsn: 0x0102_0304_0506_0708, dmaster: 7, flags: FLAG_MIGRATED_WITH_DATA };
        let value = header.with_data(b"payload");
        assert_eq!(value.len(), HEADER_LEN + 7);
        let (decoded, data) = RecordHeader::decode(&value).expect("long enough");
        assert_eq!(decoded, header);
        assert_eq!(data, b"payload");
    }

    #[test]
    fn short_values_are_absent() {
        assert!(RecordHeader::decode(&[0u8; HEADER_LEN - 1]).is_none());
        assert!(RecordHeader::decode(&[0u8; HEADER_LEN]).is_some());
    }

    #[test]
    fn layout_matches_ctdb_ltdb_header() {
        let value = RecordHeader { rsn: 1, dmaster: 2, flags: 3 }.encode();
        assert_eq!(&value[0..8], &1u64.to_ne_bytes());
        assert_eq!(&value[8..12], &2u32.to_ne_bytes());
        assert_eq!(&value[12..16], &[0; 4]);
        assert_eq!(&value[16..20], &3u32.to_ne_bytes());
    }
}
