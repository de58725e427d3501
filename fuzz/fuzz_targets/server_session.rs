#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| toolwire_protocol::fuzzing::server_session(data));
