//! A live capture of the ring: a 3-node cluster on 127.0.6.11-13, tshark listening on
//! loopback, one record migrating back and forth between nodes 0 and 1 while its LMASTER is
//! node 2, so every migration after the first is REQ_CALL (to the LMASTER, forwarded to the
//! DMASTER), REQ_DMASTER (old DMASTER to LMASTER) and REPLY_DMASTER (LMASTER to the new
//! DMASTER). tshark's CTDB dissector must decode all three with sensible fields.
//!
//! Needs tshark (Debian package tshark) and the right to capture on `lo` (root, as CI runs).

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rctdb::client::DaemonConnection;
use rctdb::wire::op;
use rctdb_cli::tool::cluster::{ClusterSpec, RunningCluster};
use rctdb_cli::tool::ring::ring_key;

const NODES: usize = 3;
const FIRST_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 11);
const PORT: u16 = 4379;
const DB: &str = "capture.tdb";
/// Migrations per ring node; each is alone on the wire (see `migrate_spaced`).
const ROUNDS: usize = 8;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Kills tshark if the test ends before it was stopped.
struct Capture {
    child: Option<Child>,
    file: PathBuf,
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tshark_missing() -> ! {
    panic!(
        "tshark is not installed: this test captures the cluster's traffic with it. \
         Install it (apt-get install tshark; .ci/run does) and run the test again."
    )
}

/// Starts tshark on `lo` for the cluster's traffic and returns once it is capturing.
fn start_capture(file: &Path) -> Capture {
    let filter = format!("tcp port {PORT} and net {}/24", Ipv4Addr::from(u32::from(FIRST_ADDRESS) & !0xff));
    let mut child = match Command::new("tshark")
        .args(["-i", "lo", "-f", &filter, "-w"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => tshark_missing(),
        Err(e) => panic!("starting tshark: {e}"),
    };
    let stderr = child.stderr.take().expect("piped stderr");
    let capture = Capture { child: Some(child), file: file.to_owned() };
    // tshark says "Capturing on 'Loopback: lo'" once its filter is installed; until then
    // packets would be missed. Its stderr is read on a thread so the wait is bounded.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut said = vec![];
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let ready = line.contains("Capturing on");
            said.push(line);
            if ready {
                let _ = tx.send(Ok(()));
            }
            // Keep draining, so tshark never blocks on a full pipe.
        }
        let _ = tx.send(Err(said.join("\n")));
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(())) => capture,
        Ok(Err(said)) => panic!("tshark stopped before capturing:\n{said}"),
        Err(_) => panic!("tshark did not start capturing within 20 s"),
    }
}

/// dumpcap hands packets to the file in blocks, when a block fills or its timer runs out, and
/// drops the open block when stopped: so "Capturing on" does not mean packets reach the file
/// yet, and stopping right after the traffic loses its tail. Attach (which asks the peers
/// over TCP) until the file grows: then everything sent before the first attach is in it.
fn wait_until_written(capture: &Capture, daemon: &mut DaemonConnection) {
    let size = || std::fs::metadata(&capture.file).map_or(0, |m| m.len());
    let deadline = Instant::now() + Duration::from_secs(10);
    while size() == 0 {
        assert!(Instant::now() < deadline, "tshark did not create {}", capture.file.display());
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100)); // what is ready now reaches the file
    let before = size();
    while size() <= before {
        assert!(Instant::now() < deadline, "tshark wrote nothing more within 10 s");
        daemon.attach(DB, TIMEOUT).expect("attach");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops tshark with SIGINT (it then finishes the file), killing it if it takes too long.
fn stop_capture(mut capture: Capture) -> PathBuf {
    let mut child = capture.child.take().expect("running");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait().expect("waiting for tshark") {
            Some(_) => break,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tshark did not stop within 10 s of SIGINT");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    capture.file.clone()
}

/// One decoded CTDB PDU of the capture.
#[derive(Debug)]
struct Pdu {
    frame: u64,
    ip_src: String,
    opcode: u32,
    src: u32,
    dst: u32,
    dbid: String,
    rsn: Option<u64>,
    dmaster: Option<u32>,
    key: String,
    hopcount: Option<u32>,
}

const FIELDS: &[&str] = &[
    "frame.number",
    "ip.src",
    "ctdb.opcode",
    "ctdb.src",
    "ctdb.dst",
    "ctdb.dbid",
    "ctdb.rsn",
    "ctdb.dmaster",
    "ctdb.key",
    "ctdb.hopcount",
];

fn decode(file: &Path) -> Vec<Pdu> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(file).args([
        "-d",
        &format!("tcp.port=={PORT},ctdb"),
        "-Y",
        "ctdb",
        "-T",
        "fields",
        "-E",
        "separator=|",
    ]);
    for field in FIELDS {
        cmd.args(["-e", field]);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("running tshark -r: {e}"));
    assert!(out.status.success(), "tshark -r failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let int = |s: &str| -> Option<u64> {
        let s = s.trim();
        match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        }
    };
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            assert_eq!(f.len(), FIELDS.len(), "unexpected tshark line {line:?}");
            Pdu {
                frame: int(f[0]).expect("frame number"),
                ip_src: f[1].to_owned(),
                opcode: int(f[2]).unwrap_or_else(|| panic!("opcode in {line:?}")) as u32,
                src: int(f[3]).unwrap_or_else(|| panic!("src in {line:?}")) as u32,
                dst: int(f[4]).unwrap_or_else(|| panic!("dst in {line:?}")) as u32,
                dbid: f[5].to_owned(),
                rsn: int(f[6]),
                dmaster: int(f[7]).map(|d| d as u32),
                key: f[8].to_owned(),
                hopcount: int(f[9]).map(|h| h as u32),
            }
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn tshark_decodes_a_live_ring() {
    let dir = std::env::temp_dir().join(format!("rctdb-wire-capture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut spec = ClusterSpec::new(NODES, &dir.join("cluster"));
    spec.first_address = FIRST_ADDRESS;
    spec.port = PORT;
    let cluster = RunningCluster::start(spec).unwrap_or_else(|e| panic!("cluster up: {e}"));

    let ring = [0usize, 1];
    let key = ring_key(&[0, 1], NODES, false); // its LMASTER is node 2
    let mut daemons: Vec<DaemonConnection> =
        ring.iter().map(|&n| DaemonConnection::connect(&cluster.socket(n)).expect("connect")).collect();
    let mut db_id = 0;
    for daemon in &mut daemons {
        db_id = daemon.attach(DB, TIMEOUT).expect("attach").db_id;
    }

    let capture = start_capture(&dir.join("ring.pcapng"));
    wait_until_written(&capture, &mut daemons[0]);
    // One migration at a time, each waiting for its answer, and a pause between them: no two
    // PDUs share a TCP segment (the dissector decodes one PDU per segment).
    for round in 0..ROUNDS * ring.len() {
        daemons[round % ring.len()].migrate(db_id, &key, false, TIMEOUT).expect("migrate");
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_until_written(&capture, &mut daemons[0]);
    let file = stop_capture(capture);
    let pdus = decode(&file);
    drop(cluster);

    let ours = |p: &&Pdu| matches!(p.opcode, op::REQ_CALL | op::REQ_DMASTER | op::REPLY_DMASTER);
    let migration_pdus: Vec<&Pdu> = pdus.iter().filter(ours).collect();
    let dump = || migration_pdus.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join("\n");
    let of = |opcode| migration_pdus.iter().filter(move |p| p.opcode == opcode);
    let (calls, req_dmasters, reply_dmasters) =
        (of(op::REQ_CALL).count(), of(op::REQ_DMASTER).count(), of(op::REPLY_DMASTER).count());
    let migrations = ROUNDS * ring.len();
    // Every migration: a REQ_CALL to the LMASTER, forwarded to the DMASTER (except the very
    // first, which the LMASTER answers itself), then REQ_DMASTER (not the first) and
    // REPLY_DMASTER.
    assert!(calls >= migrations, "{calls} REQ_CALLs for {migrations} migrations:\n{}", dump());
    assert!(req_dmasters >= migrations - 1, "{req_dmasters} REQ_DMASTERs:\n{}", dump());
    assert!(reply_dmasters >= migrations, "{reply_dmasters} REPLY_DMASTERs:\n{}", dump());

    let node_ip = |pnn: u32| Ipv4Addr::from(u32::from(FIRST_ADDRESS) + pnn).to_string();
    let lmaster = 2;
    for p in &migration_pdus {
        assert_eq!(p.dbid, format!("{db_id:#010x}"), "db id of {p:?}");
        assert_eq!(p.key, hex(&key), "key of {p:?}");
        assert!(p.src < NODES as u32 && p.dst < NODES as u32, "node numbers of {p:?}");
        match p.opcode {
            op::REQ_CALL => {
                // From a ring node to the DMASTER its copy names (the LMASTER when it has
                // none), or forwarded on (by the LMASTER to the DMASTER it knows), keeping
                // its origin as srcnode and counting hops.
                assert!(ring.contains(&(p.src as usize)), "REQ_CALL origin: {p:?}");
                assert_ne!(p.dst, p.src, "REQ_CALL to itself: {p:?}");
                let hops = p.hopcount.expect("REQ_CALL has a hopcount");
                if p.ip_src == node_ip(p.src) {
                    assert_eq!(hops, 0, "REQ_CALL from its origin: {p:?}");
                } else {
                    assert!(hops >= 1, "forwarded REQ_CALL: {p:?}");
                }
            }
            op::REQ_DMASTER => {
                let dmaster = p.dmaster.expect("REQ_DMASTER names the new DMASTER");
                assert!(dmaster < NODES as u32 && dmaster != p.src, "REQ_DMASTER dmaster: {p:?}");
                assert_eq!(p.dst, lmaster, "REQ_DMASTER goes to the LMASTER: {p:?}");
                assert_eq!(p.ip_src, node_ip(p.src), "REQ_DMASTER speaks for its sender: {p:?}");
                assert!(p.rsn.is_some(), "REQ_DMASTER rsn: {p:?}");
            }
            _ => {
                assert_eq!(p.src, lmaster, "REPLY_DMASTER comes from the LMASTER: {p:?}");
                assert!(ring.contains(&(p.dst as usize)), "REPLY_DMASTER goes to a ring node: {p:?}");
                assert_eq!(p.ip_src, node_ip(p.src), "REPLY_DMASTER speaks for its sender: {p:?}");
                assert!(p.rsn.is_some(), "REPLY_DMASTER rsn: {p:?}");
            }
        }
    }
    // Each handover raises the RSN: the record's history only goes forward.
    for opcode in [op::REQ_DMASTER, op::REPLY_DMASTER] {
        let rsns: Vec<(u64, u64)> = of(opcode).map(|p| (p.frame, p.rsn.unwrap_or(0))).collect();
        assert!(rsns.windows(2).all(|w| w[0].1 < w[1].1), "rsn of opcode {opcode} must grow: {rsns:?}");
        let last = rsns.last().expect("some").1;
        assert!(last >= migrations as u64 - 1, "rsn {last} after {migrations} migrations: {rsns:?}");
    }
    // A REQ_DMASTER's new DMASTER is the destination of the REPLY_DMASTER that follows it.
    for req in of(op::REQ_DMASTER) {
        let reply = of(op::REPLY_DMASTER).find(|r| r.frame > req.frame).expect("a REPLY_DMASTER follows");
        assert_eq!((reply.dst, reply.rsn), (req.dmaster.unwrap(), req.rsn), "{req:?} then {reply:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
