//! The settings of rctdbd that can change at run time (`rctdb getvar/setvar/listvars`, and
//! Samba's `ctdb` tool), named as Samba's CTDB names them and in CTDB's units: a time with
//! a CTDB name is in seconds. A local cluster fails over in well under a second, so each such
//! time has a second name ending in `Ms` that takes and prints milliseconds; settings CTDB
//! does not have are in milliseconds and carry `Ms` too. The two names of one time are one
//! setting: whichever is set last wins. The daemon keeps every time in milliseconds.
//!
//! `payload` holds the bodies of CTDB's tunable controls in CTDB's own layouts, and `opcode`
//! their control numbers plus the few node controls that are ours alone.

/// The runtime-tunable settings of one node, times in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunables {
    /// "KeepaliveInterval" (s) / "KeepaliveIntervalMs": a heartbeat goes to every peer this
    /// often.
    pub keepalive_interval_ms: u64,
    /// "KeepaliveLimit": a peer silent for `keepalive_interval_ms * keepalive_limit` is dead.
    pub keepalive_limit: u64,
    /// "ElectionTimeout" (s) / "ElectionTimeoutMs": a candidate without a result after this
    /// long tries again.
    pub election_timeout_ms: u64,
    /// "RecoverInterval" (s) / "RecoverIntervalMs": how often the leader checks whether the
    /// cluster needs a recovery.
    pub recover_interval_ms: u64,
    /// "RecoverTimeout" (s) / "RecoverTimeoutMs": a node that does not answer a recovery step
    /// within this is excluded.
    pub recover_timeout_ms: u64,
    /// "RecoveryBanPeriod" (s) / "RecoveryBanPeriodMs": a node that failed recoveries, or
    /// failed to store a record, stays out of the cluster this long.
    pub recovery_ban_period_ms: u64,
    /// "MigrationResendMs": a migration not done after this sends its request again; each
    /// resend doubles the wait.
    pub migration_resend_ms: u64,
    /// "MigrationResendMaxMs": the longest wait between two resends of a migration request.
    pub migration_resend_max_ms: u64,
    /// "FirstUseTimeoutMs": how long a record migrated for a client stays here for that
    /// client before remote requests may take it.
    pub first_use_timeout_ms: u64,
    /// "MaxHops": a request forwarded this often is dropped and a recovery asked for (CTDB's
    /// MaxRedirectCount plays this part).
    pub max_hops: u64,
    /// "VacuumInterval" (s) / "VacuumIntervalMs": a vacuuming run starts this often (DESIGN
    /// §8.5); 0 turns vacuuming off.
    pub vacuum_interval_ms: u64,
    /// "VacuumMaxRunTime" (s) / "VacuumMaxRunTimeMs": a run still going after this long
    /// stops; what it did not reach waits for the next run.
    pub vacuum_max_run_time_ms: u64,
    /// "VacuumFastPathCount": every this many runs, one also scans the whole database for
    /// empty records, instead of only the keys deleted since the last run.
    pub vacuum_fast_path_count: u64,
    /// "LeftOutHoldMs": the records of a node a recovery left out, neither crashed nor
    /// refusing connections, wait for it this long after it was last heard from, unmoved,
    /// unavailable; back in time, it keeps them (a false death costs a pause, not data).
    /// 2 s: a node stalled for 1.5 s (a VM pause, a swap burst) is heard again about an
    /// interval after it resumes, within the hold even on a clock 10 % fast; and after a
    /// SIGSTOP of the lock holder a survivor serves its keys within 3 s (0.6 s to notice
    /// the death fits inside the hold, which counts from the last heartbeat; a recovery
    /// takes 0.1-0.3 s). It must outlast a lease (half the dead time, stretched by the
    /// clock-rate bound), which is checked where it is used.
    pub left_out_hold_ms: u64,
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
            left_out_hold_ms: 2_000,
        }
    }
}

/// What a tunable's value counts, under one of its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Intervals, hops, runs, pieces: no unit.
    Count,
    /// Whole seconds, CTDB's unit for its times. A time that is not a whole number of
    /// seconds reads rounded up, so a running timer never reads as 0 (VacuumInterval's off).
    Seconds,
    /// Milliseconds: the names ending in `Ms`.
    Millis,
}

const MS_PER_SECOND: u64 = 1000;

/// One name of a tunable: its unit, the smallest value that makes sense (in that unit), and
/// the field it reads and writes.
struct Spec {
    name: &'static str,
    unit: Unit,
    min: u64,
    value: fn(&Tunables) -> u64,
    slot: fn(&mut Tunables) -> &mut u64,
}

macro_rules! spec {
    ($name:literal, $unit:ident, $min:expr, $field:ident) => {
        Spec { name: $name, unit: Unit::$unit, min: $min, value: |t| t.$field, slot: |t| &mut t.$field }
    };
}

/// Every name, in the order `names()` and `listing()` give them.
const SPECS: [Spec; 22] = [
    spec!("KeepaliveInterval", Seconds, 1, keepalive_interval_ms),
    spec!("KeepaliveIntervalMs", Millis, 1, keepalive_interval_ms),
    // With a limit of 1, one heartbeat lost to scheduling jitter would declare a peer dead.
    spec!("KeepaliveLimit", Count, 2, keepalive_limit),
    spec!("ElectionTimeout", Seconds, 1, election_timeout_ms),
    spec!("ElectionTimeoutMs", Millis, 1, election_timeout_ms),
    spec!("RecoverInterval", Seconds, 1, recover_interval_ms),
    spec!("RecoverIntervalMs", Millis, 1, recover_interval_ms),
    spec!("RecoverTimeout", Seconds, 1, recover_timeout_ms),
    spec!("RecoverTimeoutMs", Millis, 1, recover_timeout_ms),
    spec!("RecoveryBanPeriod", Seconds, 1, recovery_ban_period_ms),
    spec!("RecoveryBanPeriodMs", Millis, 1, recovery_ban_period_ms),
    spec!("MigrationResendMs", Millis, 1, migration_resend_ms),
    spec!("MigrationResendMaxMs", Millis, 1, migration_resend_max_ms),
    spec!("FirstUseTimeoutMs", Millis, 1, first_use_timeout_ms),
    // One hop is the normal case (a request to the LMASTER forwarded to the DMASTER).
    spec!("MaxHops", Count, 2, max_hops),
    spec!("VacuumInterval", Seconds, 0, vacuum_interval_ms),
    spec!("VacuumIntervalMs", Millis, 0, vacuum_interval_ms),
    spec!("VacuumMaxRunTime", Seconds, 1, vacuum_max_run_time_ms),
    spec!("VacuumMaxRunTimeMs", Millis, 1, vacuum_max_run_time_ms),
    spec!("VacuumFastPathCount", Count, 1, vacuum_fast_path_count),
    spec!("RepackLimit", Count, 0, repack_limit),
    spec!("LeftOutHoldMs", Millis, 1, left_out_hold_ms),
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

/// Tunable values travel in CTDB's controls as 32-bit numbers, under every name: a time in
/// seconds may be at most this many milliseconds too.
pub const MAX_VALUE: u64 = u32::MAX as u64;

/// `ctdb listvars` pads the names to this width.
const LISTING_NAME_WIDTH: usize = 26;

impl Spec {
    /// The stored value as this name reads it.
    fn read(&self, tunables: &Tunables) -> u64 {
        let stored = (self.value)(tunables);
        match self.unit {
            Unit::Count | Unit::Millis => stored,
            Unit::Seconds => stored.div_ceil(MS_PER_SECOND),
        }
    }

    /// The value to store for `value` given under this name, if it is in range.
    fn to_stored(&self, value: u64) -> Result<u64, String> {
        let name = self.name;
        if value < self.min {
            let hint = match self.unit {
                Unit::Seconds => format!(" ({name}Ms takes milliseconds)"),
                Unit::Count | Unit::Millis => String::new(),
            };
            return Err(format!("{name} = {value}: the smallest allowed value is {}{hint}", self.min));
        }
        let (max, stored) = match self.unit {
            Unit::Count | Unit::Millis => (MAX_VALUE, value),
            Unit::Seconds => (MAX_VALUE / MS_PER_SECOND, value.saturating_mul(MS_PER_SECOND)),
        };
        if value > max {
            return Err(match self.unit {
                Unit::Seconds => {
                    format!("{name} = {value}: at most {max} s, whose milliseconds are a 32-bit value")
                }
                Unit::Count | Unit::Millis => {
                    format!("{name} = {value}: tunables are 32-bit values, at most {max}")
                }
            });
        }
        Ok(stored)
    }
}

impl Tunables {
    /// Every tunable name, in a stable order: CTDB's names, each time's `Ms` name after it.
    pub fn names() -> &'static [&'static str] {
        &NAMES
    }

    /// The value of the tunable `name` in its unit, matched case-insensitively as ctdb does.
    pub fn get(&self, name: &str) -> Option<u64> {
        spec_of(name).map(|spec| spec.read(self))
    }

    /// Sets the tunable `name` (case-insensitive) to `value` in its unit, if it is in range;
    /// otherwise nothing changes and the message says why.
    pub fn set(&mut self, name: &str, value: u64) -> Result<(), String> {
        let spec = spec_of(name).ok_or_else(|| format!("no such tunable {name:?}"))?;
        let mut changed = self.clone();
        *(spec.slot)(&mut changed) = spec.to_stored(value)?;
        // The resend backoff doubles from MigrationResendMs up to MigrationResendMaxMs, so
        // the pair must stay ordered whichever of the two changes.
        if changed.migration_resend_ms > changed.migration_resend_max_ms {
            return Err(format!(
                "{} = {value}: MigrationResendMs ({}) must not exceed MigrationResendMaxMs ({})",
                spec.name, changed.migration_resend_ms, changed.migration_resend_max_ms
            ));
        }
        *self = changed;
        Ok(())
    }

    /// `Name = value` lines, as `ctdb listvars` prints them.
    pub fn listing(&self) -> String {
        SPECS
            .iter()
            .map(|spec| format!("{:<LISTING_NAME_WIDTH$} = {}\n", spec.name, spec.read(self)))
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
    fn defaults_read_in_each_names_unit() {
        let t = Tunables::default();
        let expected = [
            ("KeepaliveInterval", 1), // 100 ms, rounded up to whole seconds
            ("KeepaliveIntervalMs", 100),
            ("KeepaliveLimit", 6),
            ("ElectionTimeout", 1),
            ("ElectionTimeoutMs", 300),
            ("RecoverInterval", 1),
            ("RecoverIntervalMs", 50),
            ("RecoverTimeout", 3),
            ("RecoverTimeoutMs", 3000),
            ("RecoveryBanPeriod", 5),
            ("RecoveryBanPeriodMs", 5000),
            ("MigrationResendMs", 200),
            ("MigrationResendMaxMs", 2000),
            ("FirstUseTimeoutMs", 200),
            ("MaxHops", 64),
            ("VacuumInterval", 10),
            ("VacuumIntervalMs", 10_000),
            ("VacuumMaxRunTime", 120),
            ("VacuumMaxRunTimeMs", 120_000),
            ("VacuumFastPathCount", 60),
            ("RepackLimit", 10_000),
            ("LeftOutHoldMs", 2000),
        ];
        assert_eq!(Tunables::names().len(), expected.len(), "a name without a check here");
        for (name, value) in expected {
            assert_eq!(t.get(name), Some(value), "{name}");
        }
        assert_eq!(t.keepalive_interval_ms, 100);
        assert_eq!(t.max_hops, 64);
    }

    #[test]
    fn ctdbs_names_take_seconds_as_ctdb_does() {
        let mut t = Tunables::default();
        t.set("KeepaliveInterval", 5).unwrap();
        assert_eq!(t.keepalive_interval_ms, 5000, "five seconds, as to a CTDB administrator");
        assert_eq!((t.get("KeepaliveInterval"), t.get("KeepaliveIntervalMs")), (Some(5), Some(5000)));
        t.set("RecoverTimeout", 120).unwrap();
        t.set("RecoveryBanPeriod", 300).unwrap();
        t.set("ElectionTimeout", 3).unwrap();
        t.set("RecoverInterval", 1).unwrap();
        t.set("VacuumInterval", 10).unwrap();
        t.set("VacuumMaxRunTime", 120).unwrap();
        assert_eq!(
            (t.recover_timeout_ms, t.recovery_ban_period_ms, t.election_timeout_ms, t.recover_interval_ms),
            (120_000, 300_000, 3000, 1000)
        );
        assert_eq!((t.vacuum_interval_ms, t.vacuum_max_run_time_ms), (10_000, 120_000));
    }

    #[test]
    fn the_two_names_of_a_time_are_one_setting_and_the_last_set_wins() {
        let mut t = Tunables::default();
        t.set("KeepaliveInterval", 2).unwrap();
        t.set("KeepaliveIntervalMs", 250).unwrap();
        assert_eq!(t.keepalive_interval_ms, 250);
        assert_eq!((t.get("KeepaliveInterval"), t.get("KeepaliveIntervalMs")), (Some(1), Some(250)));
        t.set("KeepaliveInterval", 2).unwrap();
        assert_eq!((t.get("KeepaliveInterval"), t.get("KeepaliveIntervalMs")), (Some(2), Some(2000)));
    }

    #[test]
    fn a_time_in_seconds_reads_rounded_up_so_a_running_timer_never_reads_as_off() {
        let mut t = Tunables::default();
        for (ms, seconds) in [(1, 1), (999, 1), (1000, 1), (1001, 2), (1500, 2), (2000, 2)] {
            t.set("VacuumIntervalMs", ms).unwrap();
            assert_eq!(t.get("VacuumInterval"), Some(seconds), "{ms} ms");
        }
        t.set("VacuumIntervalMs", 0).unwrap();
        assert_eq!(t.get("VacuumInterval"), Some(0), "off reads as off");
    }

    #[test]
    fn names_are_unique_even_ignoring_case() {
        let names = Tunables::names();
        for (i, a) in names.iter().enumerate() {
            assert!(names[i + 1..].iter().all(|b| !a.eq_ignore_ascii_case(b)), "{a} twice");
        }
    }

    #[test]
    fn names_in_milliseconds_end_in_ms_and_follow_their_seconds_name() {
        for spec in &SPECS {
            assert_eq!(spec.unit == Unit::Millis, spec.name.ends_with("Ms"), "{}", spec.name);
        }
        for pair in SPECS.windows(2).filter(|pair| pair[0].unit == Unit::Seconds) {
            assert_eq!(pair[1].name, format!("{}Ms", pair[0].name), "the Ms name follows its seconds name");
        }
    }

    #[test]
    fn every_name_round_trips_through_set_and_get() {
        for (i, name) in Tunables::names().iter().enumerate() {
            let mut t = Tunables::default();
            // Within MigrationResendMs <= MigrationResendMaxMs (200 <= 2000) for either.
            let value = 500 + i as u64;
            t.set(name, value).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(t.get(name), Some(value), "{name}");
            let same_setting = |other: &str| {
                other.eq_ignore_ascii_case(&format!("{name}Ms")) || format!("{other}Ms") == **name
            };
            let others_unchanged = Tunables::names()
                .iter()
                .filter(|other| *other != name && !same_setting(other))
                .all(|other| t.get(other) == Tunables::default().get(other));
            assert!(others_unchanged, "setting {name} changed another tunable");
        }
    }

    #[test]
    fn set_reaches_the_named_field() {
        let mut t = Tunables::default();
        t.set("KeepaliveInterval", 11).unwrap();
        t.set("KeepaliveLimit", 12).unwrap();
        t.set("ElectionTimeoutMs", 13).unwrap();
        t.set("RecoverIntervalMs", 14).unwrap();
        t.set("RecoverTimeout", 15).unwrap();
        t.set("RecoveryBanPeriodMs", 16).unwrap();
        t.set("MigrationResendMs", 17).unwrap();
        t.set("MigrationResendMaxMs", 18).unwrap();
        t.set("FirstUseTimeoutMs", 19).unwrap();
        t.set("MaxHops", 20).unwrap();
        t.set("VacuumIntervalMs", 21).unwrap();
        t.set("VacuumMaxRunTime", 22).unwrap();
        t.set("VacuumFastPathCount", 23).unwrap();
        t.set("RepackLimit", 24).unwrap();
        t.set("LeftOutHoldMs", 25).unwrap();
        let expected = Tunables {
            keepalive_interval_ms: 11_000,
            keepalive_limit: 12,
            election_timeout_ms: 13,
            recover_interval_ms: 14,
            recover_timeout_ms: 15_000,
            recovery_ban_period_ms: 16,
            migration_resend_ms: 17,
            migration_resend_max_ms: 18,
            first_use_timeout_ms: 19,
            max_hops: 20,
            vacuum_interval_ms: 21,
            vacuum_max_run_time_ms: 22_000,
            vacuum_fast_path_count: 23,
            repack_limit: 24,
            left_out_hold_ms: 25,
        };
        assert_eq!(t, expected);
    }

    #[test]
    fn unknown_names_are_refused() {
        let mut t = Tunables::default();
        assert_eq!(t.get("NoSuchThing"), None);
        assert_eq!(t.get(""), None);
        assert_eq!(t.get("MigrationResend"), None, "ours are in milliseconds, and say so");
        let err = t.set("NoSuchThing", 5).unwrap_err();
        assert!(err.contains("no such tunable") && err.contains("NoSuchThing"), "{err}");
        assert_eq!(t, Tunables::default());
    }

    #[test]
    fn values_out_of_range_are_refused() {
        let mut t = Tunables::default();
        for name in Tunables::names() {
            if ["VacuumInterval", "VacuumIntervalMs", "RepackLimit"].contains(name) {
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
        assert!(t.set("KeepaliveIntervalMs", 1).is_ok());
        assert_eq!(t.get("KeepaliveIntervalMs"), Some(1));
    }

    #[test]
    fn a_time_in_seconds_is_refused_where_its_milliseconds_leave_32_bits() {
        let mut t = Tunables::default();
        let most = MAX_VALUE / 1000;
        t.set("RecoverTimeout", most).unwrap();
        assert_eq!(t.get("RecoverTimeoutMs"), Some(most * 1000));
        assert!(t.get("RecoverTimeoutMs").is_some_and(|ms| ms <= MAX_VALUE));
        let err = t.set("RecoverTimeout", most + 1).unwrap_err();
        assert!(err.contains("32-bit") && err.contains(&most.to_string()), "{err}");
        assert_eq!(t.get("RecoverTimeout"), Some(most), "a refused value changes nothing");
    }

    #[test]
    fn below_a_second_the_error_names_the_milliseconds_name() {
        let err = Tunables::default().set("KeepaliveInterval", 0).unwrap_err();
        assert!(err.contains("KeepaliveIntervalMs"), "{err}");
    }

    #[test]
    fn migration_resend_stays_below_its_maximum() {
        let mut t = Tunables::default();
        let err = t.set("MigrationResendMs", 2001).unwrap_err();
        assert!(err.contains("MigrationResendMaxMs (2000)"), "{err}");
        let err = t.set("MigrationResendMaxMs", 199).unwrap_err();
        assert!(err.contains("MigrationResendMs (200)"), "{err}");
        assert_eq!(t, Tunables::default());
        t.set("MigrationResendMs", 2000).unwrap();
        t.set("MigrationResendMaxMs", 2000).unwrap();
        assert_eq!((t.migration_resend_ms, t.migration_resend_max_ms), (2000, 2000));
    }

    #[test]
    fn names_match_case_insensitively() {
        let mut t = Tunables::default();
        assert_eq!(t.get("keepaliveintervalms"), Some(100));
        assert_eq!(t.get("KEEPALIVEINTERVAL"), Some(1));
        assert_eq!(t.get("MAXHOPS"), Some(64));
        t.set("recoverybanperiod", 7).unwrap();
        assert_eq!(t.recovery_ban_period_ms, 7000);
        let err = t.set("keepalivelimit", 1).unwrap_err();
        assert!(err.starts_with("KeepaliveLimit = 1"), "the canonical name: {err}");
    }

    #[test]
    fn listing_prints_every_name_like_ctdb() {
        let listing = Tunables::default().listing();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), Tunables::names().len());
        assert_eq!(lines[0], "KeepaliveInterval          = 1");
        assert_eq!(lines[1], "KeepaliveIntervalMs        = 100");
        assert_eq!(lines[14], "MaxHops                    = 64");
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
        fn set_then_get_agree(index in 0usize..SPECS.len(), value in 0u64..=MAX_VALUE + 10) {
            let mut t = Tunables::default();
            let name = Tunables::names()[index];
            match t.set(name, value) {
                Ok(()) => prop_assert_eq!(t.get(name), Some(value)),
                Err(_) => prop_assert_eq!(t, Tunables::default()),
            }
        }
    }
}
