//! Does tshark's CTDB dissector read our bytes the way we mean them? Writes a pcap with one
//! TCP segment per packet (the dissector is heuristic and decodes one PDU per segment) and
//! compares the fields tshark prints. Skipped, with a message, when tshark is not installed.

use super::*;
use std::path::Path;
use std::process::Command;

/// pcap (not pcapng) with Ethernet framing: small enough to write by hand.
struct Pcap {
    out: Vec<u8>,
    seq: [u32; 2],
}

impl Pcap {
    fn new() -> Pcap {
        let mut out = 0xa1b2_c3d4u32.to_le_bytes().to_vec();
        out.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
        out.extend_from_slice(&4u16.to_le_bytes());
        for v in [0u32, 0, 65535, 1] {
            // thiszone, sigfigs, snaplen, LINKTYPE_ETHERNET
            out.extend_from_slice(&v.to_le_bytes());
        }
        Pcap { out, seq: [1000, 5000] }
    }

    /// One segment carrying `payload`, from node `from` (0 or 1) to the other; node 1 talks
    /// to node 0's port 4379 and node 0 answers on its own connection to node 1.
    fn segment(&mut self, from: usize, payload: &[u8]) {
        let ips = [[127, 0, 0, 51], [127, 0, 0, 52]];
        let (src, dst) = (ips[from], ips[1 - from]);
        let (sport, dport) = (40000 + from as u16, 4379u16);
        let mut ip = vec![0x45, 0];
        let total = 20 + 20 + payload.len();
        ip.extend_from_slice(&(total as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let sum = ip.chunks(2).fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
        let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());

        let mut tcp = Vec::new();
        tcp.extend_from_slice(&sport.to_be_bytes());
        tcp.extend_from_slice(&dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq[from].to_be_bytes());
        tcp.extend_from_slice(&1u32.to_be_bytes()); // ack
        tcp.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]); // PSH|ACK, no checksum
        self.seq[from] += payload.len() as u32;

        let mut frame = vec![0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, 0x08, 0x00];
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&tcp);
        frame.extend_from_slice(payload);
        let n = self.out.len() as u32;
        for v in [1_700_000_000u32, n, frame.len() as u32, frame.len() as u32] {
            self.out.extend_from_slice(&v.to_le_bytes());
        }
        self.out.extend_from_slice(&frame);
    }
}

const FIELDS: &[&str] = &[
    "ctdb.opcode",
    "ctdb.len",
    "ctdb.generation",
    "ctdb.src",
    "ctdb.dst",
    "ctdb.id",
    "ctdb.immediate",
    "ctdb.dbid",
    "ctdb.callid",
    "ctdb.hopcount",
    "ctdb.rsn",
    "ctdb.dmaster",
    "ctdb.keylen",
    "ctdb.datalen",
    "ctdb.key",
    "ctdb.data",
    "ctdb.ctrl_opcode",
    "ctdb.srvid",
    "ctdb.clientid",
    "ctdb.status",
    "ctdb.errorlen",
    "ctdb.error",
];

fn tshark_fields(pcap: &Path) -> Option<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap).args(["-d", "tcp.port==4379,ctdb", "-T", "fields", "-E", "separator=|"]);
    for f in FIELDS {
        cmd.args(["-e", f]);
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("tshark not runnable ({e}): skipping the dissector check");
            return None;
        }
    };
    assert!(out.status.success(), "tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
}

fn row(pairs: &[(&str, &str)]) -> String {
    FIELDS
        .iter()
        .map(|f| pairs.iter().find(|(name, _)| name == f).map_or("", |(_, v)| *v))
        .collect::<Vec<_>>()
        .join("|")
}

#[test]
fn tshark_decodes_every_operation() {
    let hdr = |destnode, srcnode, reqid, body| Packet { generation: 77, destnode, srcnode, reqid, body };
    // (sender, packet) in capture order. The control reply follows its request: the
    // dissector only decodes replies it can match.
    let packets = vec![
        (
            1,
            hdr(
                0,
                1,
                10,
                Body::ReqCall(ReqCall {
                    flags: CALL_FLAG_IMMEDIATE_MIGRATION,
                    db_id: 0x42fe_72c5,
                    callid: CALL_FETCH_FUNC,
                    hopcount: 2,
                    key: b"key1".to_vec(),
                    calldata: vec![],
                }),
            ),
        ),
        (
            0,
            hdr(
                1,
                0,
                10,
                Body::ReqDmaster(ReqDmaster {
                    db_id: 0x42fe_72c5,
                    rsn: 0x1_0000_0005,
                    dmaster: 1,
                    key: b"key1".to_vec(),
                    data: b"val".to_vec(),
                    record_flags: 0x0001_0000,
                }),
            ),
        ),
        (
            0,
            hdr(
                1,
                0,
                10,
                Body::ReplyDmaster(ReplyDmaster {
                    db_id: 0x42fe_72c5,
                    rsn: 6,
                    key: b"key1".to_vec(),
                    data: b"val".to_vec(),
                    record_flags: 0x0001_0000,
                }),
            ),
        ),
        (0, hdr(1, 0, 11, Body::ReplyCall(ReplyCall { status: 0, data: b"xy".to_vec() }))),
        (
            1,
            hdr(
                0,
                1,
                12,
                Body::ReqControl(ReqControl {
                    opcode: 18,
                    srvid: 0xF001_0000_0000_0000,
                    client_id: 0xabc,
                    flags: 0,
                    data: b"db".to_vec(),
                }),
            ),
        ),
        (
            0,
            hdr(
                1,
                0,
                12,
                Body::ReplyControl(ReplyControl { status: 0, data: vec![1], errmsg: b"oops".to_vec() }),
            ),
        ),
        (0, hdr(1, 0, 13, Body::Keepalive(Keepalive { version: 1, uptime: 9 }))),
    ];
    let mut pcap = Pcap::new();
    for (from, p) in &packets {
        pcap.segment(*from, &encode(p));
    }
    let dir = std::env::temp_dir().join(format!("rctdb-dissector-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ctdb.pcap");
    std::fs::write(&file, &pcap.out).unwrap();
    let Some(lines) = tshark_fields(&file) else { return };
    let _ = std::fs::remove_dir_all(&dir);

    let expected = [
        row(&[
            ("ctdb.opcode", "0"),
            ("ctdb.len", "64"),
            ("ctdb.generation", "77"),
            ("ctdb.src", "1"),
            ("ctdb.dst", "0"),
            ("ctdb.id", "10"),
            ("ctdb.immediate", "1"),
            ("ctdb.dbid", "0x42fe72c5"),
            ("ctdb.callid", "4278190082"),
            ("ctdb.hopcount", "2"),
            ("ctdb.keylen", "4"),
            ("ctdb.datalen", "0"),
            ("ctdb.key", "6b657931"),
            // The dissector adds the empty calldata as a zero-length field.
            ("ctdb.data", "<MISSING>"),
        ]),
        row(&[
            ("ctdb.opcode", "2"),
            ("ctdb.len", "72"),
            ("ctdb.generation", "77"),
            ("ctdb.src", "0"),
            ("ctdb.dst", "1"),
            ("ctdb.id", "10"),
            ("ctdb.dbid", "0x42fe72c5"),
            ("ctdb.rsn", "0x0000000100000005"),
            ("ctdb.dmaster", "1"),
            ("ctdb.keylen", "4"),
            ("ctdb.datalen", "3"),
            ("ctdb.key", "6b657931"),
            ("ctdb.data", "76616c"),
        ]),
        row(&[
            ("ctdb.opcode", "3"),
            ("ctdb.len", "72"),
            ("ctdb.generation", "77"),
            ("ctdb.src", "0"),
            ("ctdb.dst", "1"),
            ("ctdb.id", "10"),
            ("ctdb.dbid", "0x42fe72c5"),
            ("ctdb.rsn", "0x0000000000000006"),
            ("ctdb.keylen", "4"),
            ("ctdb.datalen", "3"),
            ("ctdb.key", "6b657931"),
            ("ctdb.data", "76616c"),
        ]),
        row(&[
            ("ctdb.opcode", "1"),
            ("ctdb.len", "48"),
            ("ctdb.generation", "77"),
            ("ctdb.src", "0"),
            ("ctdb.dst", "1"),
            ("ctdb.id", "11"),
            ("ctdb.status", "0"),
            ("ctdb.datalen", "2"),
            ("ctdb.data", "7879"),
        ]),
        row(&[
            ("ctdb.opcode", "7"),
            ("ctdb.len", "64"),
            ("ctdb.generation", "77"),
            ("ctdb.src", "1"),
            ("ctdb.dst", "0"),
            ("ctdb.id", "12"),
            ("ctdb.datalen", "2"),
            ("ctdb.data", "6462"),
            ("ctdb.ctrl_opcode", "18"),
            ("ctdb.srvid", "0xf001000000000000"),
            ("ctdb.clientid", "0x00000abc"),
        ]),
        row(&[
            ("ctdb.opcode", "8"),
            ("ctdb.len", "56"),
            ("ctdb.generation", "77"),
            ("ctdb.src", "0"),
            ("ctdb.dst", "1"),
            ("ctdb.id", "12"),
            ("ctdb.datalen", "1"),
            ("ctdb.data", "01"),
            ("ctdb.ctrl_opcode", "18"),
            ("ctdb.status", "0"),
            ("ctdb.errorlen", "4"),
            ("ctdb.error", "6f6f7073"),
        ]),
        row(&[
            ("ctdb.opcode", "9"),
            ("ctdb.len", "40"),
            ("ctdb.generation", "77"),
            ("ctdb.src", "0"),
            ("ctdb.dst", "1"),
            ("ctdb.id", "13"),
        ]),
    ];
    assert_eq!(lines.len(), expected.len(), "tshark output:\n{}", lines.join("\n"));
    for (i, (got, want)) in lines.iter().zip(expected.iter()).enumerate() {
        assert_eq!(got, want, "frame {} ({:?}); fields: {}", i + 1, packets[i].1.body, FIELDS.join("|"));
    }
}
