//! The settings of rctdbd that can change at run time (`rctdb getvar/setvar/listvars`), named
//! as Samba's CTDB names them. CTDB counts its timers in seconds; ours are milliseconds,
//! because a local test cluster should fail over in well under a second.
//!
//! `payload` holds the bodies of CTDB's tunable controls in CTDB's own layouts, and `opcode`
//! their control numbers plus the few node controls that are ours alone.

/// The runtime-tunable settings of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunables {
    /// "KeepaliveInterval": a heartbeat goes to every peer this often.
    pub keepalive_interval_ms: u64,
    /// "KeepaliveLimit": a peer silent for `keepalive_interval_ms * keepalive_limit` is dead.
    pub keepalive_limit: u64,
    /// "ElectionTimeout": a candidate without a result after this long tries again.
    pub election_timeout_ms: u64,
    /// "RecoverInterval": how often the leader checks whether the cluster needs a recovery.
    pub recover_interval_ms: u64,
    /// "RecoverTimeout": a node that does not answer a recovery step within this is excluded.
    pub recover_timeout_ms: u64,
    /// "RecoveryBanPeriod": a node that failed recoveries, or failed to store a record, stays
    /// out of the cluster this long.
    pub recovery_ban_period_ms: u64,
    /// "MigrationResend": a migration not done after this sends its request again; each
    /// resend doubles the wait.
    pub migration_resend_ms: u64,
    /// "MigrationResendMax": the longest wait between two resends of a migration request.
    pub migration_resend_max_ms: u64,
    /// "FirstUseTimeout": how long a record migrated for a client stays here for that client
    /// before remote requests may take it.
    pub first_use_timeout_ms: u64,
    /// "MaxHops": a request forwarded this often is dropped and a recovery asked for (CTDB's
    /// MaxRedirectCount plays this part).
    pub max_hops: u64,
    /// "VacuumInterval": a vacuuming run starts this often (DESIGN §8.5); 0 turns
    /// vacuuming off.
    pub vacuum_interval_ms: u64,
    /// "VacuumMaxRunTime": a run still going after this long stops; what it did not reach
    /// waits for the next run.
    pub vacuum_max_run_time_ms: u64,
    /// "VacuumFastPathCount": every this many runs, one also scans the whole database for
    /// empty records, instead of only the keys deleted since the last run.
    pub vacuum_fast_path_count: u64,
    /// "RepackLimit": once vacuuming has removed records and a database's free list is
    /// longer than this, the database is repacked (0: never).
    pub repack_limit: u64,
}

impl Default for Tunables {
    fn default() -> Tunables {
        Tunables {
            keepalive_interval_ms: 100,
            keepalive_limit: 6,
            election_timeout_ms: 300,
            recover_interval_ms: 50,
            recover_timeout_ms: 3000,
            recovery_ban_period_ms: 5000,
            migration_resend_ms: 200,
            migration_resend_max_ms: 2000,
            first_use_timeout_ms: 200,
            max_hops: 64,
            vacuum_interval_ms: 10_000,
            vacuum_max_run_time_ms: 120_000,
            vacuum_fast_path_count: 60,
            repack_limit: 10_000,
        }
    }
}

/// One tunable: its name, the smallest value that makes sense, and where it lives.
struct Spec {
    name: &'static str,
    min: u64,
    value: fn(&Tunables) -> u64,
    slot: fn(&mut Tunables) -> &mut u64,
}

/// Every tunable, in the order `names()` and `listing()` give them.
const SPECS: [Spec; 14] = [
    Spec {
        name: "KeepaliveInterval",
        min: 1,
        value: |t| t.keepalive_interval_ms,
        slot: |t| &mut t.keepalive_interval_ms,
    },
    // With a limit of 1, one heartbeat lost to scheduling jitter would declare a peer dead.
    Spec { name: "KeepaliveLimit", min: 2, value: |t| t.keepalive_limit, slot: |t| &mut t.keepalive_limit },
    Spec {
        name: "ElectionTimeout",
        min: 1,
        value: |t| t.election_timeout_ms,
        slot: |t| &mut t.election_timeout_ms,
    },
    Spec {
        name: "RecoverInterval",
        min: 1,
        value: |t| t.recover_interval_ms,
        slot: |t| &mut t.recover_interval_ms,
    },
    Spec {
        name: "RecoverTimeout",
        min: 1,
        value: |t| t.recover_timeout_ms,
        slot: |t| &mut t.recover_timeout_ms,
    },
    Spec {
        name: "RecoveryBanPeriod",
        min: 1,
        value: |t| t.recovery_ban_period_ms,
        slot: |t| &mut t.recovery_ban_period_ms,
    },
    Spec {
        name: "MigrationResend",
        min: 1,
        value: |t| t.migration_resend_ms,
        slot: |t| &mut t.migration_resend_ms,
    },
    Spec {
        name: "MigrationResendMax",
        min: 1,
        value: |t| t.migration_resend_max_ms,
        slot: |t| &mut t.migration_resend_max_ms,
    },
    Spec {
        name: "FirstUseTimeout",
        min: 1,
        value: |t| t.first_use_timeout_ms,
        slot: |t| &mut t.first_use_timeout_ms,
    },
    // One hop is the normal case (a request to the LMASTER forwarded to the DMASTER).
    Spec { name: "MaxHops", min: 2, value: |t| t.max_hops, slot: |t| &mut t.max_hops },
    Spec {
        name: "VacuumInterval",
        min: 0,
        value: |t| t.vacuum_interval_ms,
        slot: |t| &mut t.vacuum_interval_ms,
    },
    Spec {
        name: "VacuumMaxRunTime",
        min: 1,
        value: |t| t.vacuum_max_run_time_ms,
        slot: |t| &mut t.vacuum_max_run_time_ms,
    },
    Spec {
        name: "VacuumFastPathCount",
        min: 1,
        value: |t| t.vacuum_fast_path_count,
        slot: |t| &mut t.vacuum_fast_path_count,
    },
    Spec { name: "RepackLimit", min: 0, value: |t| t.repack_limit, slot: |t| &mut t.repack_limit },
];

/// Every name, for `names()`, taken from SPECS so the two cannot drift apart.
const NAMES: [&str; SPECS.len()] = {
    let mut names = [""; SPECS.len()];
    let mut i = 0;
    while i < SPECS.len() {
        names[i] = SPECS[i].name;
        i += 1;
    }
    names
};

/// Tunable values travel in CTDB's controls as 32-bit numbers.
pub const MAX_VALUE: u64 = u32::MAX as u64;

/// `ctdb listvars` pads the names to this width.
const LISTING_NAME_WIDTH: usize = 26;

impl Tunables {
    /// Every tunable's CTDB-style name, in a stable order.
    pub fn names() -> &'static [&'static str] {
        &NAMES
    }

    /// The value of the tunable `name`, matched case-insensitively as ctdb does.
    pub fn get(&self, name: &str) -> Option<u64> {
        spec_of(name).map(|spec| (spec.value)(self))
    }

    /// Sets the tunable `name` (case-insensitive) if `value` is in its range; otherwise
    /// nothing changes and the message says why.
    pub fn set(&mut self, name: &str, value: u64) -> Result<(), String> {
        let spec = spec_of(name).ok_or_else(|| format!("no such tunable {name:?}"))?;
        let name = spec.name;
        if value < spec.min {
            return Err(format!("{name} = {value}: the smallest allowed value is {}", spec.min));
        }
        if value > MAX_VALUE {
            return Err(format!("{name} = {value}: tunables are 32-bit values, at most {MAX_VALUE}"));
        }
        // The resend backoff doubles from MigrationResend up to MigrationResendMax, so the
        // pair must stay ordered whichever of the two changes.
        if name == "MigrationResend" && value > self.migration_resend_max_ms {
            return Err(format!(
                "{name} = {value}: must not exceed MigrationResendMax ({})",
                self.migration_resend_max_ms
            ));
        }
        if name == "MigrationResendMax" && value < self.migration_resend_ms {
            return Err(format!(
                "{name} = {value}: must be at least MigrationResend ({})",
                self.migration_resend_ms
            ));
        }
        *(spec.slot)(self) = value;
        Ok(())
    }

    /// `Name = value` lines, as `ctdb listvars` prints them.
    pub fn listing(&self) -> String {
        SPECS
            .iter()
            .map(|spec| format!("{:<LISTING_NAME_WIDTH$} = {}\n", spec.name, (spec.value)(self)))
            .collect()
    }
}

fn spec_of(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|spec| spec.name.eq_ignore_ascii_case(name))
}

/// Control numbers: CTDB's for the tunable controls (`enum ctdb_controls` in Samba's
/// `ctdb/protocol/protocol.h`), ours (far above CTDB's range) for the node controls.
pub mod opcode {
    /// CTDB_CONTROL_SET_TUNABLE: request `payload::encode_set_request`, empty reply.
    pub const SET_TUNABLE: u32 = 48;
    /// CTDB_CONTROL_GET_TUNABLE: request `payload::encode_get_request`, reply
    /// `payload::encode_value`.
    pub const GET_TUNABLE: u32 = 49;
    /// CTDB_CONTROL_LIST_TUNABLES: empty request, reply `payload::encode_list_reply`.
    pub const LIST_TUNABLES: u32 = 50;
    /// ours: stop sending to and answering peers but stay alive (a fault for tests).
    pub const QUIET: u32 = 0x7c00_0010;
    /// ours: end QUIET, talk to peers again.
    pub const UNQUIET: u32 = 0x7c00_0011;
    /// ours: leave the cluster and exit.
    pub const STOP_NODE: u32 = 0x7c00_0012;
}

/// The bodies of the tunable controls, in the layouts of Samba's CTDB (all integers
/// little-endian, as CTDB writes host order on the little-endian machines it runs on):
///
/// - GET_TUNABLE request (`struct ctdb_control_get_tunable`): u32 length, then `length`
///   bytes of name including its NUL.
/// - SET_TUNABLE request (`struct ctdb_tunable_old`): u32 value, u32 length, then the name
///   as above.
/// - LIST_TUNABLES reply (`struct ctdb_control_list_tunable`): u32 length, then `length`
///   bytes: the names joined by ':', with a NUL.
/// - GET_TUNABLE reply: the value as one u32.
///
/// Decoders check every length and never panic. Like ctdb, they take a name without its NUL
/// and skip empty entries in a list (ctdbd itself sends the list with a leading ':').
pub mod payload {
    const U32_LEN: usize = 4;

    pub fn encode_get_request(name: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(U32_LEN + name.len() + 1);
        put_counted_string(&mut out, name);
        out
    }

    pub fn decode_get_request(data: &[u8]) -> Result<String, String> {
        let (length, rest) = take_u32(data, "GET_TUNABLE request: name length")?;
        let field = exact_field(rest, length, "GET_TUNABLE request: name")?;
        name_of(field, "GET_TUNABLE request")
    }

    pub fn encode_set_request(name: &str, value: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 * U32_LEN + name.len() + 1);
        out.extend_from_slice(&value.to_le_bytes());
        put_counted_string(&mut out, name);
        out
    }

    /// The tunable's name and its new value.
    pub fn decode_set_request(data: &[u8]) -> Result<(String, u32), String> {
        let (value, rest) = take_u32(data, "SET_TUNABLE request: value")?;
        let (length, rest) = take_u32(rest, "SET_TUNABLE request: name length")?;
        let field = exact_field(rest, length, "SET_TUNABLE request: name")?;
        Ok((name_of(field, "SET_TUNABLE request")?, value))
    }

    /// Names must not contain ':' or NUL; tunable names never do.
    pub fn encode_list_reply(names: &[&str]) -> Vec<u8> {
        let joined = names.join(":");
        let mut out = Vec::with_capacity(U32_LEN + joined.len() + 1);
        put_counted_string(&mut out, &joined);
        out
    }

    pub fn decode_list_reply(data: &[u8]) -> Result<Vec<String>, String> {
        let (length, rest) = take_u32(data, "LIST_TUNABLES reply: length")?;
        let field = exact_field(rest, length, "LIST_TUNABLES reply: names")?;
        let text = text_of(field, "LIST_TUNABLES reply")?;
        Ok(text.split(':').filter(|name| !name.is_empty()).map(str::to_string).collect())
    }

    pub fn encode_value(value: u32) -> Vec<u8> {
        value.to_le_bytes().to_vec()
    }

    pub fn decode_value(data: &[u8]) -> Result<u32, String> {
        match <[u8; U32_LEN]>::try_from(data) {
            Ok(bytes) => Ok(u32::from_le_bytes(bytes)),
            Err(_) => Err(format!("GET_TUNABLE reply: {} bytes, want a 4-byte value", data.len())),
        }
    }

    fn put_counted_string(out: &mut Vec<u8>, text: &str) {
        // A name that does not fit a u32 cannot fit a packet either; saturating keeps this
        // total, and the receiver's length check rejects the result.
        let length = u32::try_from(text.len() + 1).unwrap_or(u32::MAX);
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        out.push(0);
    }

    fn take_u32<'a>(data: &'a [u8], what: &str) -> Result<(u32, &'a [u8]), String> {
        match data.split_first_chunk::<U32_LEN>() {
            Some((bytes, rest)) => Ok((u32::from_le_bytes(*bytes), rest)),
            None => Err(format!("{what}: {} bytes, want 4", data.len())),
        }
    }

    /// The counted field must be exactly what is left: CTDB's senders never pad it.
    fn exact_field<'a>(rest: &'a [u8], length: u32, what: &str) -> Result<&'a [u8], String> {
        match usize::try_from(length) {
            Ok(length) if length == rest.len() => Ok(rest),
            _ => Err(format!("{what}: length says {length} bytes, {} follow", rest.len())),
        }
    }

    /// The text of a string field: one trailing NUL is dropped, any other is an error.
    fn text_of<'a>(field: &'a [u8], what: &str) -> Result<&'a str, String> {
        let text = field.strip_suffix(&[0]).unwrap_or(field);
        if text.contains(&0) {
            return Err(format!("{what}: a NUL inside the text"));
        }
        std::str::from_utf8(text).map_err(|_| format!("{what}: the text is not UTF-8"))
    }

    fn name_of(field: &[u8], what: &str) -> Result<String, String> {
        let name = text_of(field, what)?;
        if name.is_empty() {
            return Err(format!("{what}: empty tunable name"));
        }
        Ok(name.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::payload::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults() {
        let t = Tunables::default();
        let expected = [
            ("KeepaliveInterval", 100),
            ("KeepaliveLimit", 6),
            ("ElectionTimeout", 300),
            ("RecoverInterval", 50),
            ("RecoverTimeout", 3000),
            ("RecoveryBanPeriod", 5000),
            ("MigrationResend", 200),
            ("MigrationResendMax", 2000),
            ("FirstUseTimeout", 200),
            ("MaxHops", 64),
        ];
        for (name, value) in expected {
            assert_eq!(t.get(name), Some(value), "{name}");
        }
        assert_eq!(t.keepalive_interval_ms, 100);
        assert_eq!(t.max_hops, 64);
    }

    #[test]
    fn names_are_unique_even_ignoring_case() {
        let names = Tunables::names();
        for (i, a) in names.iter().enumerate() {
            assert!(names[i + 1..].iter().all(|b| !a.eq_ignore_ascii_case(b)), "{a} twice");
        }
    }

    #[test]
    fn every_name_round_trips_through_set_and_get() {
        for (i, name) in Tunables::names().iter().enumerate() {
            let mut t = Tunables::default();
            // Within MigrationResend <= MigrationResendMax (200 <= 2000) for either.
            let value = 500 + i as u64;
            t.set(name, value).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(t.get(name), Some(value), "{name}");
            let others_unchanged = Tunables::names()
                .iter()
                .filter(|other| *other != name)
                .all(|other| t.get(other) == Tunables::default().get(other));
            assert!(others_unchanged, "setting {name} changed another tunable");
        }
    }

    #[test]
    fn set_reaches_the_named_field() {
        let mut t = Tunables::default();
        t.set("KeepaliveInterval", 11).unwrap();
        t.set("KeepaliveLimit", 12).unwrap();
        t.set("ElectionTimeout", 13).unwrap();
        t.set("RecoverInterval", 14).unwrap();
        t.set("RecoverTimeout", 15).unwrap();
        t.set("RecoveryBanPeriod", 16).unwrap();
        t.set("MigrationResend", 17).unwrap();
        t.set("MigrationResendMax", 18).unwrap();
        t.set("FirstUseTimeout", 19).unwrap();
        t.set("MaxHops", 20).unwrap();
        t.set("VacuumInterval", 21).unwrap();
        t.set("VacuumMaxRunTime", 22).unwrap();
        t.set("VacuumFastPathCount", 23).unwrap();
        t.set("RepackLimit", 24).unwrap();
        let expected = Tunables {
            keepalive_interval_ms: 11,
            keepalive_limit: 12,
            election_timeout_ms: 13,
            recover_interval_ms: 14,
            recover_timeout_ms: 15,
            recovery_ban_period_ms: 16,
            migration_resend_ms: 17,
            migration_resend_max_ms: 18,
            first_use_timeout_ms: 19,
            max_hops: 20,
            vacuum_interval_ms: 21,
            vacuum_max_run_time_ms: 22,
            vacuum_fast_path_count: 23,
            repack_limit: 24,
        };
        assert_eq!(t, expected);
    }

    #[test]
    fn unknown_names_are_refused() {
        let mut t = Tunables::default();
        assert_eq!(t.get("NoSuchThing"), None);
        assert_eq!(t.get(""), None);
        let err = t.set("NoSuchThing", 5).unwrap_err();
        assert!(err.contains("no such tunable") && err.contains("NoSuchThing"), "{err}");
        assert_eq!(t, Tunables::default());
    }

    #[test]
    fn values_out_of_range_are_refused() {
        let mut t = Tunables::default();
        for name in Tunables::names() {
            if *name == "VacuumInterval" || *name == "RepackLimit" {
                assert!(t.set(name, 0).is_ok(), "0 turns {name} off");
            } else {
                let err = t.set(name, 0).unwrap_err();
                assert!(err.contains(name) && err.contains("smallest"), "{err}");
            }
            let err = t.set(name, MAX_VALUE + 1).unwrap_err();
            assert!(err.contains("32-bit"), "{err}");
        }
        for name in ["KeepaliveLimit", "MaxHops"] {
            assert!(t.set(name, 1).is_err(), "{name} = 1");
            assert!(t.set(name, 2).is_ok(), "{name} = 2");
        }
        assert!(t.set("KeepaliveInterval", 1).is_ok());
        assert_eq!(t.get("KeepaliveInterval"), Some(1));
    }

    #[test]
    fn migration_resend_stays_below_its_maximum() {
        let mut t = Tunables::default();
        let err = t.set("MigrationResend", 2001).unwrap_err();
        assert!(err.contains("MigrationResendMax (2000)"), "{err}");
        let err = t.set("MigrationResendMax", 199).unwrap_err();
        assert!(err.contains("MigrationResend (200)"), "{err}");
        assert_eq!(t, Tunables::default());
        t.set("MigrationResend", 2000).unwrap();
        t.set("MigrationResendMax", 2000).unwrap();
        assert_eq!((t.migration_resend_ms, t.migration_resend_max_ms), (2000, 2000));
    }

    #[test]
    fn names_match_case_insensitively() {
        let mut t = Tunables::default();
        assert_eq!(t.get("keepaliveinterval"), Some(100));
        assert_eq!(t.get("MAXHOPS"), Some(64));
        t.set("recoverybanperiod", 7000).unwrap();
        assert_eq!(t.recovery_ban_period_ms, 7000);
        let err = t.set("keepalivelimit", 1).unwrap_err();
        assert!(err.starts_with("KeepaliveLimit = 1"), "the canonical name: {err}");
    }

    #[test]
    fn listing_prints_every_name_like_ctdb() {
        let listing = Tunables::default().listing();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), Tunables::names().len());
        assert_eq!(lines[0], "KeepaliveInterval          = 100");
        assert_eq!(lines[9], "MaxHops                    = 64");
    }

    #[test]
    fn payloads_have_ctdbs_layouts() {
        assert_eq!(encode_get_request("MaxHops"), b"\x08\0\0\0MaxHops\0");
        assert_eq!(encode_set_request("MaxHops", 0x0102_0304), b"\x04\x03\x02\x01\x08\0\0\0MaxHops\0");
        assert_eq!(encode_list_reply(&["Ab", "Cd"]), b"\x06\0\0\0Ab:Cd\0");
        assert_eq!(encode_value(7), [7, 0, 0, 0]);
    }

    #[test]
    fn decoders_take_what_ctdb_sends() {
        // ctdbd's list starts with ':' (ctdb_tunable_names_to_string).
        assert_eq!(
            decode_list_reply(b"\x0b\0\0\0:Ab:Cd:Efg\0"),
            Ok(vec!["Ab".to_string(), "Cd".into(), "Efg".into()])
        );
        assert_eq!(decode_list_reply(b"\0\0\0\0"), Ok(vec![]));
        assert_eq!(decode_list_reply(b"\x01\0\0\0\0"), Ok(vec![]));
        // A name without its NUL, as ctdb's strndup would read it.
        assert_eq!(decode_get_request(b"\x07\0\0\0MaxHops"), Ok("MaxHops".into()));
    }

    #[test]
    fn decoders_refuse_bad_lengths_and_names() {
        assert!(decode_get_request(b"").is_err());
        assert!(decode_get_request(b"\x09\0\0\0MaxHops\0").is_err(), "length too long");
        assert!(decode_get_request(b"\x07\0\0\0MaxHops\0").is_err(), "a byte left over");
        assert!(decode_get_request(b"\x01\0\0\0\0").is_err(), "empty name");
        assert!(decode_get_request(b"\x04\0\0\0a\0b\0").is_err(), "NUL inside");
        assert!(decode_get_request(b"\x03\0\0\0\xff\xfe\0").is_err(), "not UTF-8");
        assert!(decode_get_request(b"\xff\xff\xff\xffab").is_err());
        assert!(decode_set_request(b"\x01\0\0").is_err());
        assert!(decode_set_request(b"\x01\0\0\0\x02\0\0").is_err());
        assert!(decode_list_reply(b"\x02\0\0\0a").is_err());
        assert!(decode_value(b"\x01\0\0").is_err());
        assert!(decode_value(b"\x01\0\0\0\0").is_err());
    }

    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z][A-Za-z0-9_]{0,40}"
    }

    proptest! {
        #[test]
        fn payloads_round_trip(name in name(), value in any::<u32>(), names in prop::collection::vec(name(), 0..12)) {
            prop_assert_eq!(decode_get_request(&encode_get_request(&name)), Ok(name.clone()));
            prop_assert_eq!(decode_set_request(&encode_set_request(&name, value)), Ok((name, value)));
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            prop_assert_eq!(decode_list_reply(&encode_list_reply(&refs)), Ok(names.clone()));
            prop_assert_eq!(decode_value(&encode_value(value)), Ok(value));
        }

        #[test]
        fn random_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_get_request(&bytes);
            let _ = decode_set_request(&bytes);
            let _ = decode_list_reply(&bytes);
            let _ = decode_value(&bytes);
        }

        #[test]
        fn counted_payloads_never_panic(length in 0u32..80, body in prop::collection::vec(any::<u8>(), 0..64)) {
            // Random bytes rarely carry a plausible length; this puts one in front.
            let mut get = length.to_le_bytes().to_vec();
            get.extend_from_slice(&body);
            let _ = decode_get_request(&get);
            let _ = decode_list_reply(&get);
            let mut set = 5u32.to_le_bytes().to_vec();
            set.extend_from_slice(&get);
            let _ = decode_set_request(&set);
        }

        #[test]
        fn set_then_get_agree(index in 0usize..10, value in 0u64..=MAX_VALUE + 10) {
            let mut t = Tunables::default();
            let name = Tunables::names()[index];
            match t.set(name, value) {
                Ok(()) => prop_assert_eq!(t.get(name), Some(value)),
                Err(_) => prop_assert_eq!(t, Tunables::default()),
            }
        }
    }
}
