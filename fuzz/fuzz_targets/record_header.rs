#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rctdb::wire::fuzz::record_header(data);
});
