#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| toolwire_protocol::fuzzing::handshake_message_3(data));
