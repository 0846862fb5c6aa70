#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rctdb::wire::fuzz::wire_packet(data);
});
