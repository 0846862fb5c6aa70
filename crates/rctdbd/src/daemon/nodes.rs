//! The nodes file, in CTDB's format: one address per line, the line's index among the
//! address lines is the node number (PNN), `#` starts a comment, blank lines are ignored.

use std::net::IpAddr;

pub fn parse_nodes(text: &str) -> Result<Vec<IpAddr>, String> {
    let mut nodes = vec![];
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let addr: IpAddr = line
            .parse()
            .map_err(|_| format!("nodes file line {}: {line:?} is not an IP address", index + 1))?;
        if nodes.contains(&addr) {
            return Err(format!("nodes file line {}: {addr} is listed twice", index + 1));
        }
        nodes.push(addr);
    }
    if nodes.is_empty() {
        return Err("nodes file lists no node".into());
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_blank_lines_do_not_count() {
        let nodes = parse_nodes("# cluster\n127.0.0.11\n\n  127.0.0.12  # second\n127.0.0.13\n").unwrap();
        let expected: Vec<IpAddr> =
            ["127.0.0.11", "127.0.0.12", "127.0.0.13"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(nodes, expected);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert!(parse_nodes("127.0.0.11\nnot-an-ip\n").unwrap_err().contains("line 2"));
        assert!(parse_nodes("127.0.0.11\n127.0.0.11\n").unwrap_err().contains("twice"));
        assert!(parse_nodes("# nothing\n").unwrap_err().contains("no node"));
    }
}
