//! The names room on a clock driven by hand.

use super::*;

const A: Owner = Owner::Token(0);
const B: Owner = Owner::Token(1);
const GRACE: Duration = Duration::from_secs(300);

fn names() -> (Names, Instant) {
    (Names::new(GRACE, 0), Instant::now())
}

#[test]
fn a_claim_is_exclusive_and_says_why() {
    let (mut n, t) = names();
    n.claim("app.example", 1, A, t).unwrap();
    let again = n.claim("app.example", 1, A, t).unwrap_err();
    assert!(
        again.message.contains("already exposes"),
        "{}",
        again.message
    );
    let other = n.claim("app.example", 2, B, t).unwrap_err();
    assert_eq!(other.code, ErrorCode::NameTaken);
    assert!(other.message.contains("another connected client"));
    assert_eq!(n.claimant("app.example"), Some(1));
    assert!(!n.is_free("app.example", t));
    assert!(n.is_free("other.example", t));
}

#[test]
fn an_ended_session_keeps_its_names_for_its_owner_until_the_grace_passes() {
    let (mut n, t) = names();
    n.claim("app.example", 1, A, t).unwrap();
    n.claim("tcp:40000", 1, A, t).unwrap();
    n.end(["app.example", "tcp:40000"], 1, false, t);
    assert_eq!(n.claimant("app.example"), None);
    assert_eq!(n.reserved_for("app.example", t), Some(A));
    assert_eq!(n.offline("app.example", t), Some(Offline::Reconnecting));

    // Another owner cannot take it during the grace...
    let later = t + GRACE - Duration::from_secs(1);
    let e = n.claim("app.example", 2, B, later).unwrap_err();
    assert!(e.message.contains("reserved"), "{}", e.message);
    // ...its owner can, from a new session.
    n.claim("app.example", 3, A, later).unwrap();
    assert_eq!(n.claimant("app.example"), Some(3));

    // The port was not taken back: it lapses at the end of the grace, and
    // then anyone may have it.
    let after = t + GRACE;
    assert!(n.is_free("tcp:40000", after));
    assert_eq!(n.reserved_for("tcp:40000", after), None);
    n.claim("tcp:40000", 4, B, after).unwrap();
}

#[test]
fn end_touches_only_the_ending_sessions_claims() {
    let (mut n, t) = names();
    n.claim("a.example", 1, A, t).unwrap();
    n.claim("b.example", 2, A, t).unwrap();
    // Session 2 lists a name it does not hold: nothing happens to it.
    n.end(["a.example", "b.example"], 2, false, t);
    assert_eq!(n.claimant("a.example"), Some(1));
    assert_eq!(n.reserved_for("b.example", t), Some(A));
    // Ending twice is harmless.
    n.end(["b.example"], 2, false, t);
    assert_eq!(n.held(t).len(), 2);
}

#[test]
fn a_client_that_left_is_offline_not_awaited() {
    let (mut n, t) = names();
    n.claim("a.example", 1, A, t).unwrap();
    n.end(["a.example"], 1, true, t);
    assert_eq!(n.offline("a.example", t), Some(Offline::Left));
    assert_eq!(n.offline("a.example", t + GRACE), None, "lapsed");
}

#[test]
fn a_reclaimed_name_is_not_lapsed_by_its_old_reservation() {
    let (mut n, t) = names();
    n.claim("a.example", 1, A, t).unwrap();
    n.end(["a.example"], 1, false, t);
    n.claim("a.example", 2, A, t + Duration::from_secs(10))
        .unwrap();
    // The old reservation's time passes while the name is claimed again.
    n.claim("z.example", 3, B, t + GRACE * 2).unwrap();
    assert_eq!(n.claimant("a.example"), Some(2));
    // Its second reservation lasts a full grace from its own end.
    let end2 = t + GRACE * 2;
    n.end(["a.example"], 2, false, end2);
    assert_eq!(
        n.reserved_for("a.example", end2 + GRACE - Duration::from_secs(1)),
        Some(A)
    );
}

#[test]
fn a_released_claim_is_free_at_once() {
    let (mut n, t) = names();
    n.claim("udp:5000", 1, A, t).unwrap();
    n.release("udp:5000", 2);
    assert_eq!(
        n.claimant("udp:5000"),
        Some(1),
        "only its own session releases it"
    );
    n.release("udp:5000", 1);
    assert!(n.is_free("udp:5000", t));
    assert_eq!(n.count_of(A), 0);
}

#[test]
fn each_token_holds_at_most_its_names_reservations_included() {
    let (mut n, t) = names();
    n.set_per_token(2);
    n.claim("a.example", 1, A, t).unwrap();
    n.claim("b.example", 1, A, t).unwrap();
    let e = n.claim("c.example", 1, A, t).unwrap_err();
    assert_eq!(e.code, ErrorCode::LimitReached);
    assert!(e.message.contains("max_names_per_token"), "{}", e.message);
    // Other tokens and anonymous owners are not counted against it.
    n.claim("c.example", 2, B, t).unwrap();
    n.claim("d.example", 3, Owner::Anonymous, t).unwrap();
    // Reserved names still count; taking one back costs nothing more.
    n.end(["a.example", "b.example"], 1, false, t);
    assert_eq!(n.count_of(A), 2);
    assert!(n.claim("e.example", 4, A, t).is_err());
    n.claim("a.example", 4, A, t).unwrap();
    // Once the reservation of b lapses, A may claim a new name.
    let after = t + GRACE;
    n.claim("e.example", 4, A, after).unwrap();
    assert_eq!(n.count_of(A), 2);
}

#[test]
fn restored_names_go_back_to_their_owners_only() {
    let (mut n, t) = names();
    n.claim("live.example", 9, B, t).unwrap();
    n.restore(vec![("a.example".into(), A), ("live.example".into(), A)], t);
    assert_eq!(n.reserved_for("a.example", t), Some(A));
    assert_eq!(
        n.claimant("live.example"),
        Some(9),
        "a live claim is left alone"
    );
    assert!(n.claim("a.example", 1, B, t).is_err());
    let mut held = n.held(t);
    held.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        held,
        [
            ("a.example".to_string(), A),
            ("live.example".to_string(), B)
        ]
    );
    assert_eq!(n.held(t + GRACE).len(), 1, "the reservation lapsed");
}
