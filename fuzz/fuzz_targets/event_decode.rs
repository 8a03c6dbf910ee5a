//! cargo-fuzz target: see `allot_fuzz::checks::event_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    allot_fuzz::checks::event_decode(data);
});
