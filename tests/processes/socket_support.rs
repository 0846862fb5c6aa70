//! Talking to a daemon's client socket packet by packet, as smbd does.

use std::os::unix::net::UnixStream;

use rctdb::wire::codec::{read_packet, write_packet};
use rctdb::wire::{Body, Packet, CURRENT_NODE, MAX_PACKET_LEN};

/// Sends `body` to the daemon the stream is connected to and returns its answer's body.
pub fn request(stream: &mut UnixStream, reqid: u32, body: Body) -> Body {
    let packet = Packet { generation: 0, destnode: CURRENT_NODE, srcnode: 0, reqid, body };
    write_packet(stream, &packet).expect("write");
    let reply = read_packet(stream, MAX_PACKET_LEN).expect("a reply");
    assert_eq!(reply.reqid, reqid);
    reply.body
}
