//! Which databases clients may attach (`rctdbd --allow-db`, `--max-databases`), checked
//! before any file is created: a client's attach is refused with a message saying why,
//! and the daemon, its other clients and its peers carry on.

use crate::wire::control::valid_db_name;

/// More databases than smbd attaches (a dozen) by far; each costs a file and its locks.
pub const DEFAULT_MAX_DATABASES: usize = 256;

#[derive(Debug, Clone)]
pub struct AttachPolicy {
    /// Names, or prefixes ending in `*`, clients may attach; empty: any valid name.
    allowed: Vec<String>,
    max_databases: usize,
}

impl Default for AttachPolicy {
    fn default() -> AttachPolicy {
        AttachPolicy { allowed: vec![], max_databases: DEFAULT_MAX_DATABASES }
    }
}

impl AttachPolicy {
    /// Refuses patterns that could never match a database name.
    pub fn new(allowed: Vec<String>, max_databases: usize) -> Result<AttachPolicy, String> {
        for pattern in &allowed {
            let name = pattern.strip_suffix('*').unwrap_or(pattern);
            if name.contains('*') || (!name.is_empty() && !valid_db_name(name)) || pattern.is_empty() {
                return Err(format!(
                    "--allow-db {pattern:?}: give a database file name, or a prefix followed by '*'"
                ));
            }
        }
        if max_databases == 0 {
            return Err("--max-databases 0 would refuse every database".to_string());
        }
        Ok(AttachPolicy { allowed, max_databases })
    }

    /// Why a client may not attach `name` while `attached` databases are (`is_attached`
    /// says whether `name` is one of them); `None` if it may.
    pub fn refusal(&self, name: &str, attached: usize, is_attached: bool) -> Option<String> {
        if !valid_db_name(name) {
            return Some(format!(
                "{name:?} is not a database name: a plain file name, 1 to 255 bytes, without '/'"
            ));
        }
        let allowed = self.allowed.is_empty()
            || self.allowed.iter().any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == pattern,
            });
        if !allowed {
            return Some(format!(
                "database {name} is not one this node lets clients attach (--allow-db {})",
                self.allowed.join(" --allow-db ")
            ));
        }
        if !is_attached && attached >= self.max_databases {
            return Some(format!(
                "database {name}: this node has {attached} databases attached, its limit \
                 (--max-databases {})",
                self.max_databases
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_patterns_and_the_limit_are_enforced_with_reasons() {
        let policy = AttachPolicy::new(vec!["locking.tdb".into(), "smbXsrv_*".into()], 3).unwrap();
        assert_eq!(policy.refusal("locking.tdb", 0, false), None);
        assert_eq!(policy.refusal("smbXsrv_session_global.tdb", 2, false), None);
        let refused = policy.refusal("secrets.tdb", 0, false).expect("not allowed");
        assert!(refused.contains("--allow-db locking.tdb --allow-db smbXsrv_*"), "{refused}");
        assert!(policy.refusal("../etc/passwd", 0, false).unwrap().contains("not a database name"));
        assert!(policy.refusal("", 0, false).is_some());
        let full = policy.refusal("smbXsrv_x.tdb", 3, false).expect("over the limit");
        assert!(full.contains("--max-databases 3"), "{full}");
        assert_eq!(policy.refusal("locking.tdb", 3, true), None, "an attached one is attached again");
        let any = AttachPolicy::default();
        assert_eq!(any.refusal("anything.tdb", 0, false), None);
        assert!(AttachPolicy::new(vec!["a*b".into()], 1).is_err());
        assert!(AttachPolicy::new(vec!["dir/x".into()], 1).is_err());
        assert!(AttachPolicy::new(vec![], 0).is_err());
    }
}
