#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rctdb::wire::fuzz::frame_stream(data);
});
