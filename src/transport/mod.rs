//! TCP links between nodes.
