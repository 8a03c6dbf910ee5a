//! `codec::decode_event_into` (replay's allocation-free decode) gives exactly what
//! `codec::decode_event` gives, whatever the reused event held before, errors included.

mod common;

use allot_domain::codec;
use allot_replay::Recorded;
use common::walkthrough;

/// The walkthrough's pool events, encoded.
fn walkthrough_payloads() -> Vec<Vec<u8>> {
    let payloads: Vec<Vec<u8>> = walkthrough()
        .records
        .iter()
        .filter_map(Recorded::pool_event)
        .map(|recorded| codec::encode_event(&recorded.event))
        .collect();
    assert!(payloads.len() > 20);
    payloads
}

/// Truncated, extended, halved, wrong schema, empty: each decode must fail as the whole one.
fn damaged(payload: &[u8]) -> [Vec<u8>; 5] {
    [
        payload[..payload.len() - 1].to_vec(),
        [payload, &[0]].concat(),
        payload[..payload.len() / 2].to_vec(),
        [&[codec::SCHEMA_VERSION + 1], &payload[1..]].concat(),
        Vec::new(),
    ]
}

#[test]
fn decoding_into_a_reused_event_equals_decoding_afresh() {
    let payloads = walkthrough_payloads();
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
        for damaged in damaged(payload) {
            let expected = codec::decode_event(&damaged);
            let mut event = reused.clone();
            let got = codec::decode_event_into(&damaged, &mut event).map(|()| event);
            assert_eq!(got, expected);
        }
    }
}

/// `codec::decode_event_for_projections` gives every field a read model reads exactly as
/// `codec::decode_event` does (a reserve's count and duration, every other action whole),
/// whatever the reused event held, and a damaged payload's error is the whole decode's.
#[test]
fn decoding_for_projections_gives_what_projections_read() {
    use allot_domain::Action;
    let payloads = walkthrough_payloads();
    let mut reused = codec::decode_event(&payloads[0]).expect("decodes");
    let mut reserves = 0;
    let mut stepped_over = 0;
    for before in &payloads {
        for payload in &payloads {
            codec::decode_event_into(before, &mut reused).expect("decodes");
            let before_actor = reused.actor.clone();
            codec::decode_event_for_projections(payload, &mut reused).expect("decodes");
            let whole = codec::decode_event(payload).expect("decodes");
            // The fast path ran: the actor is stepped over, not decoded.
            assert_eq!(reused.actor, before_actor);
            if whole.actor != before_actor {
                stepped_over += 1;
            }
            assert_eq!(reused.pool, whole.pool);
            assert_eq!(reused.at, whole.at);
            assert_eq!(reused.allocated_before, whole.allocated_before);
            assert_eq!(reused.allocated_after, whole.allocated_after);
            assert_eq!(reused.prior_state, whole.prior_state);
            assert_eq!(reused.new_state, whole.new_state);
            assert_eq!(reused.change, whole.change);
            match (&reused.action, &whole.action) {
                (
                    Action::Reserve {
                        duration_ms, count, ..
                    },
                    Action::Reserve {
                        duration_ms: whole_duration,
                        count: whole_count,
                        ..
                    },
                ) => {
                    reserves += 1;
                    assert_eq!((duration_ms, count), (whole_duration, whole_count));
                }
                (action, whole_action) => assert_eq!(action, whole_action),
            }
        }
    }
    assert!(reserves > 0, "the walkthrough reserves");
    assert!(stepped_over > 0, "the walkthrough has several actors");
    // A string it steps over that is not UTF-8 fails it as it fails the whole decode.
    let mut not_utf8 = 0;
    for payload in &payloads {
        let whole = codec::decode_event(payload).expect("decodes");
        let mut labels = vec![
            whole.actor.as_str().to_owned(),
            whole.token.as_str().to_owned(),
        ];
        if let Action::Reserve { requester, .. } = &whole.action {
            labels.push(requester.clone());
        }
        for label in labels.iter().filter(|label| !label.is_empty()) {
            let Some(at) = payload
                .windows(label.len())
                .position(|window| window == label.as_bytes())
            else {
                continue;
            };
            let mut damaged = payload.clone();
            damaged[at] = 0xff;
            let expected = codec::decode_event(&damaged).err();
            assert!(expected.is_some(), "{label} made not UTF-8 must fail");
            let mut event = reused.clone();
            let got = codec::decode_event_for_projections(&damaged, &mut event).err();
            assert_eq!(got, expected, "{label}");
            not_utf8 += 1;
        }
    }
    assert!(not_utf8 > 0);
    for payload in &payloads {
        for damaged in damaged(payload) {
            let expected = codec::decode_event(&damaged).err();
            let mut event = reused.clone();
            let got = codec::decode_event_for_projections(&damaged, &mut event).err();
            assert_eq!(got, expected);
        }
    }
}
