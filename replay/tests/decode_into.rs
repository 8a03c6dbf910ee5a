//! `codec::decode_event_into` (replay's allocation-free decode) gives exactly what
//! `codec::decode_event` gives, whatever the reused event held before, errors included.

mod common;

use allot_domain::codec;
use allot_replay::Recorded;
use common::walkthrough;

#[test]
fn decoding_into_a_reused_event_equals_decoding_afresh() {
    let ledger = walkthrough();
    let payloads: Vec<Vec<u8>> = ledger
        .records
        .iter()
        .filter_map(Recorded::pool_event)
        .map(|recorded| codec::encode_event(&recorded.event))
        .collect();
    assert!(payloads.len() > 20);
    let mut reused = codec::decode_event(&payloads[0]).expect("decodes");
    // Every event after every other: each variant of the action and change replaces each one.
    for before in &payloads {
        for payload in &payloads {
            codec::decode_event_into(before, &mut reused).expect("decodes");
            codec::decode_event_into(payload, &mut reused).expect("decodes");
            assert_eq!(Ok(&reused), codec::decode_event(payload).as_ref());
        }
    }
    // The strings' buffers are reused, not reallocated.
    for payload in &payloads {
        codec::decode_event_into(payload, &mut reused).expect("decodes");
        let buffers = (reused.pool.0.as_ptr(), reused.token.0.as_ptr());
        codec::decode_event_into(payload, &mut reused).expect("decodes");
        assert_eq!(buffers, (reused.pool.0.as_ptr(), reused.token.0.as_ptr()));
    }
    for payload in &payloads {
        for damaged in [
            payload[..payload.len() - 1].to_vec(),
            [payload.as_slice(), &[0]].concat(),
            payload[..payload.len() / 2].to_vec(),
            [&[codec::SCHEMA_VERSION + 1], &payload[1..]].concat(),
            Vec::new(),
        ] {
            let expected = codec::decode_event(&damaged);
            let mut event = reused.clone();
            let got = codec::decode_event_into(&damaged, &mut event).map(|()| event);
            assert_eq!(got, expected);
        }
    }
}
