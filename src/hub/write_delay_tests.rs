//! `--write-delay` in memory: when writes leave, and what never waits.
use std::time::Duration;

use super::tests::{close_code, frames_of, join, masked, send, turn};
use super::*;
use crate::frame::{MessageKind, encode_message};
use crate::memory_transport::MemoryTransport;
use crate::reason::Exit;

fn delayed(ms: u64) -> Hub<MemoryTransport> {
    Hub::new(Config { write_delay: Duration::from_millis(ms), ..Config::default() })
}

fn all() -> Topic {
    Topic::new("all").unwrap()
}

/// Runs the loop as the driver does, from `now` up to `until`: sleeps
/// until the hub's next deadline, then a turn. Returns the wake-ups.
fn run_until(hub: &mut Hub<MemoryTransport>, now: &mut Millis, until: Millis) -> Vec<Millis> {
    let mut wakeups = Vec::new();
    loop {
        let next = hub.poll_timeout().expect("housekeeping is always scheduled");
        assert!(wakeups.is_empty() || next > *now, "a busy wake-up at {now}");
        if next > until {
            return wakeups;
        }
        *now = next;
        turn(hub, *now);
        wakeups.push(*now);
    }
}

#[test]
fn frames_queued_at_t_t5_and_t12_leave_together_at_t20_in_one_write() {
    let mut hub = delayed(20);
    let t = MemoryTransport::new();
    join(&mut hub, "/ws", &t, 0);
    let mut now = 0;
    run_until(&mut hub, &mut now, 1_100); // past the first housekeeping
    let calls = t.write_calls();
    for (at, byte) in [(1_100, 1u8), (1_105, 2), (1_112, 3)] {
        now = at;
        hub.publish(&all(), encode_message(MessageKind::Binary, &[byte]), now);
        turn(&mut hub, now);
        assert_eq!(t.write_calls(), calls, "nothing written at {now}");
        assert_eq!(hub.poll_timeout(), Some(1_120), "the loop sleeps until the write is due");
    }
    let wakeups = run_until(&mut hub, &mut now, 1_200);
    assert_eq!(wakeups, [1_120], "woken once, when the write was due");
    assert_eq!(t.write_calls(), calls + 1, "one gathering write");
    let got: Vec<Vec<u8>> = frames_of(&t.take_sent()).into_iter().map(|f| f.1).collect();
    assert_eq!(got, [[1], [2], [3]]);
}

#[test]
fn without_a_delay_every_turn_writes_what_it_queued() {
    let mut hub = Hub::new(Config::default());
    let t = MemoryTransport::new();
    join(&mut hub, "/ws", &t, 0);
    for now in [10, 11, 12] {
        let calls = t.write_calls();
        hub.publish(&all(), encode_message(MessageKind::Binary, &[now as u8]), now);
        turn(&mut hub, now);
        assert_eq!(t.write_calls(), calls + 1, "written in the turn at {now}");
    }
}

#[test]
fn a_half_full_queue_and_a_full_write_do_not_wait() {
    // Half of an 8-message queue: written at once, as without a delay.
    let mut hub = Hub::new(Config { queue_messages: 8, write_delay: Duration::from_millis(20), ..Config::default() });
    let t = MemoryTransport::new();
    join(&mut hub, "/ws", &t, 0);
    let calls = t.write_calls();
    for i in 0..4u8 {
        hub.publish(&all(), encode_message(MessageKind::Binary, &[i]), 5);
    }
    assert_eq!(t.write_calls(), calls + 1, "at half: written at once");
    // 64 frames fill one gathering write: written at the end of the turn.
    let mut hub = delayed(20);
    let t = MemoryTransport::new();
    join(&mut hub, "/ws", &t, 0);
    for i in 0..63u8 {
        hub.publish(&all(), encode_message(MessageKind::Binary, &[i]), 5);
    }
    turn(&mut hub, 5);
    assert!(t.take_sent().is_empty(), "63 frames wait");
    hub.publish(&all(), encode_message(MessageKind::Binary, &[63]), 5);
    turn(&mut hub, 5);
    assert_eq!(frames_of(&t.take_sent()).len(), 64, "a full write goes at once");
    // 64 KiB fill one write too.
    hub.publish(&all(), encode_message(MessageKind::Binary, &[0; 40_000]), 6);
    turn(&mut hub, 6);
    assert!(t.take_sent().is_empty());
    hub.publish(&all(), encode_message(MessageKind::Binary, &[0; 40_000]), 6);
    turn(&mut hub, 6);
    assert_eq!(frames_of(&t.take_sent()).len(), 2);
}

#[test]
fn pongs_and_closes_go_at_once_with_what_waited_before_them() {
    let mut hub = delayed(20);
    let t = MemoryTransport::new();
    let id = join(&mut hub, "/ws", &t, 0);
    hub.publish(&all(), encode_message(MessageKind::Text, b"before"), 5);
    turn(&mut hub, 5);
    assert!(t.take_sent().is_empty());
    send(&mut hub, id, 0x89, b"ping", 6);
    turn(&mut hub, 6);
    let got = frames_of(&t.take_sent());
    assert_eq!(got, [(1, b"before".to_vec()), (10, b"ping".to_vec())], "the pong at once, in order");
    // A close from the client: its reply is not delayed either.
    hub.publish(&all(), encode_message(MessageKind::Text, b"last"), 7);
    turn(&mut hub, 7);
    assert!(t.take_sent().is_empty());
    send(&mut hub, id, 0x88, &1000u16.to_be_bytes(), 8);
    turn(&mut hub, 8);
    let got = frames_of(&t.take_sent());
    assert_eq!(got[0], (1, b"last".to_vec()));
    assert_eq!(close_code(&got[1]), 1000);
    assert!(t.is_write_shut(), "closed at 8, not at 27");
}

#[test]
fn a_shutdown_does_not_wait_for_delayed_writes() {
    let mut hub = delayed(500);
    let t = MemoryTransport::new();
    join(&mut hub, "/ws", &t, 0);
    hub.publish(&all(), encode_message(MessageKind::Text, b"queued"), 5);
    turn(&mut hub, 5);
    hub.begin_shutdown(6);
    let got = frames_of(&t.take_sent());
    assert_eq!(got[0], (1, b"queued".to_vec()));
    assert_eq!(close_code(&got[1]), 1001);
}

#[test]
fn a_writable_event_does_not_cut_the_delay_short() {
    let mut hub = delayed(20);
    let t = MemoryTransport::new();
    let id = join(&mut hub, "/ws", &t, 0);
    hub.publish(&all(), encode_message(MessageKind::Text, b"x"), 5);
    // Edge-triggered readiness reports writable beside the client's input.
    t.push_input(&masked(0x8A, b"unsolicited pong"));
    hub.readable(id, false);
    hub.writable(id, 6);
    turn(&mut hub, 6);
    assert!(t.take_sent().is_empty(), "still waiting for 25");
    let mut now = 6;
    run_until(&mut hub, &mut now, 25);
    assert_eq!(frames_of(&t.take_sent()), [(1, b"x".to_vec())]);
}

#[test]
fn the_write_timeout_counts_from_when_the_write_was_due() {
    let mut hub = Hub::new(Config {
        write_delay: Duration::from_millis(400),
        write_timeout: Duration::from_secs(1),
        ..Config::default()
    });
    let t = MemoryTransport::new();
    join(&mut hub, "/ws", &t, 0);
    t.set_room(0); // the reader stops reading
    let mut now = 0;
    run_until(&mut hub, &mut now, 2_000);
    hub.publish(&all(), encode_message(MessageKind::Text, b"stuck"), 2_000);
    run_until(&mut hub, &mut now, 3_390);
    assert_eq!(hub.stats().open, 1, "due at 2,400: not stalled before 3,400");
    run_until(&mut hub, &mut now, 3_410);
    assert_eq!(hub.stats().exited(Exit::SlowConsumer), 1, "stalled at 3,400");
}

#[test]
fn a_reused_id_is_written_on_time_whatever_its_last_owner_left_listed() {
    let mut hub = delayed(20);
    let (a, b) = (MemoryTransport::new(), MemoryTransport::new());
    let first = join(&mut hub, "/ws", &a, 0);
    hub.publish(&all(), encode_message(MessageKind::Text, b"for a"), 5);
    hub.remove(first, crate::connection::Reason::IdleTimeout, 5);
    // The slab hands its id to the next client, which gets a message that
    // is due at 30; the entry its last owner left (due at 25) stands for
    // nothing now.
    let second = join(&mut hub, "/ws", &b, 6);
    assert_eq!(first, second);
    hub.publish(&all(), encode_message(MessageKind::Text, b"for b"), 10);
    let mut now = 10;
    run_until(&mut hub, &mut now, 30);
    assert_eq!(frames_of(&b.take_sent()), [(1, b"for b".to_vec())], "written by 30");
    run_until(&mut hub, &mut now, 200);
    assert!(b.take_sent().is_empty());
    hub.publish(&all(), encode_message(MessageKind::Text, b"again"), 200);
    let wakeups = run_until(&mut hub, &mut now, 230);
    assert_eq!(wakeups, [220], "listed again after its write");
    assert_eq!(frames_of(&b.take_sent()), [(1, b"again".to_vec())]);
}
