//! The write slots' bookkeeping, table by table: who gets room, in which order, and when.

use super::*;

fn asker(name: &str, created_s: i64) -> Asker {
    let created = Timestamp::from_second(created_s).unwrap_or(Timestamp::UNIX_EPOCH);
    Asker {
        uid: format!("uid-{name}"),
        age: Age { created, namespace: "ns".into(), name: name.into() },
        job: ObjectRef::new(name).within("ns"),
    }
}

fn woken_names(t: &mut Turns) -> Vec<String> {
    t.woken().into_iter().map(|r| r.name).collect()
}

fn order(t: &Turns) -> Vec<&str> {
    t.waiting.values().map(|w| w.uid.as_str()).collect()
}

#[test]
fn room_is_handed_out_oldest_job_first() {
    let now = Instant::now();
    let mut t = Turns::new(16, 8);
    let (a, b, c) = (asker("a", 10), asker("b", 20), asker("c", 30));
    assert_eq!(t.take(&b, 16, now), 16, "free room is taken at once");
    // Younger c asks first, then older a: a is served first all the same.
    assert_eq!(t.take(&c, 4, now), 0);
    assert_eq!(t.take(&a, 8, now), 0);
    assert_eq!(order(&t), ["uid-a", "uid-c"]);
    assert_eq!(t.next_batch(&b, 8, now), 8, "b keeps 8 of its 16: a's 8 are set aside");
    assert_eq!(woken_names(&mut t), ["a"]);
    assert_eq!(order(&t), ["uid-c"]);
    t.release("uid-b", now);
    assert_eq!(woken_names(&mut t), ["c"]);
    assert_eq!(t.take(&a, 8, now), 8, "set aside for a");
    assert_eq!(t.take(&c, 2, now), 2, "set aside for c: 4, of which it now wants 2");
    assert_eq!(t.free, 6);
}

#[test]
fn a_waiting_batch_is_never_split_and_never_overtaken() {
    let now = Instant::now();
    let mut t = Turns::new(16, 8);
    let (a, b, c) = (asker("a", 10), asker("b", 20), asker("c", 30));
    assert_eq!(t.take(&a, 16, now), 16);
    assert_eq!(t.take(&b, 16, now), 0);
    assert_eq!(t.next_batch(&a, 12, now), 12, "4 free");
    assert!(t.woken().is_empty(), "4 free is not b's batch of 16");
    assert_eq!(t.take(&c, 2, now), 0, "younger c does not overtake b");
    assert_eq!(t.next_batch(&a, 14, now), 14, "older a may grow into free room");
}

#[test]
fn a_job_keeps_its_room_between_batches_while_no_older_job_waits() {
    let now = Instant::now();
    let mut t = Turns::new(16, 8);
    let (a, b, c, old) = (asker("a", 10), asker("b", 20), asker("c", 30), asker("old", 5));
    assert_eq!(t.take(&a, 4, now), 4);
    assert_eq!(t.take(&b, 8, now), 8, "free room, nobody older waiting");
    assert_eq!(t.take(&c, 16, now), 4, "free room is taken in part");
    assert_eq!(t.next_batch(&c, 16, now), 4, "c keeps its 4; nothing free to grow");
    assert_eq!(t.next_batch(&a, 8, now), 4, "a keeps its 4; nothing free to grow");
    t.release("uid-b", now);
    assert_eq!(t.next_batch(&a, 8, now), 8, "a grows into b's room");
    assert_eq!(t.next_batch(&a, 2, now), 2, "a shrinks: 6 go back");
    assert_eq!(t.take(&old, 16, now), 10, "an older job takes the free room");
    assert_eq!(t.next_batch(&old, 16, now), 10, "and keeps it");
    t.release("uid-old", now);
    assert_eq!(t.take(&old, 16, now), 10, "asks again: the free 10");
    t.release("uid-old", now);
    t.release("uid-c", now);
    assert_eq!(t.next_batch(&a, 16, now), 16, "alone: a grows to the cap");
    assert_eq!(t.take(&old, 4, now), 0, "none free: old queues");
    assert_eq!(t.next_batch(&a, 16, now), 16, "a started creating: it is not stopped halfway");
    assert_eq!(t.next_batch(&a, 12, now), 12, "a shrinks: the 4 freed go to old");
    assert_eq!(woken_names(&mut t), ["old"]);
    assert_eq!(t.next_batch(&a, 16, now), 12, "an older job waits: a does not grow");
    t.release("uid-a", now);
    assert_eq!(t.take(&old, 4, now), 4);
    assert_eq!(t.free, 12);
}

#[test]
fn at_most_max_holders_jobs_hold_room() {
    let now = Instant::now();
    let mut t = Turns::new(16, 2);
    let (a, b, c, d) = (asker("a", 10), asker("b", 20), asker("c", 30), asker("d", 40));
    assert_eq!(t.take(&a, 2, now), 2);
    assert_eq!(t.take(&b, 2, now), 2);
    assert_eq!(t.take(&c, 2, now), 0, "12 free, but two jobs hold room already");
    assert_eq!(t.take(&d, 2, now), 0);
    t.release("uid-a", now);
    assert_eq!(woken_names(&mut t), ["c"], "one job's room freed: one job woken");
    t.release("uid-b", now);
    assert_eq!(woken_names(&mut t), ["d"]);
}

#[test]
fn room_set_aside_and_not_taken_goes_to_the_next_job() {
    let now = Instant::now();
    let mut t = Turns::new(4, 8);
    let (a, b, c) = (asker("a", 10), asker("b", 20), asker("c", 30));
    assert_eq!(t.take(&a, 4, now), 4);
    assert_eq!(t.take(&b, 4, now), 0);
    assert_eq!(t.take(&c, 4, now), 0);
    t.release("uid-a", now);
    assert_eq!(woken_names(&mut t), ["b"]);
    t.expire(now + SET_ASIDE_FOR - Duration::from_millis(1));
    assert!(t.woken().is_empty(), "still b's");
    t.expire(now + SET_ASIDE_FOR);
    assert_eq!(woken_names(&mut t), ["c"], "b never came: c is woken");
    assert_eq!(t.take(&b, 4, now + SET_ASIDE_FOR), 0, "b queues again");
}

#[test]
fn a_cancelled_job_leaves_the_queue_and_its_room_goes_on() {
    let now = Instant::now();
    let mut t = Turns::new(4, 8);
    let (a, b, c) = (asker("a", 10), asker("b", 20), asker("c", 30));
    assert_eq!(t.take(&a, 4, now), 4);
    assert_eq!(t.take(&b, 4, now), 0);
    assert_eq!(t.take(&c, 4, now), 0);
    t.cancel("uid-b", now);
    assert_eq!(t.queued(), 1);
    t.release("uid-a", now);
    assert_eq!(woken_names(&mut t), ["c"]);
    t.cancel("uid-c", now);
    assert_eq!(t.free, 4, "c's room is free again");
}

#[test]
fn asking_twice_keeps_one_place_and_the_latest_want() {
    let now = Instant::now();
    let mut t = Turns::new(8, 8);
    let (a, b) = (asker("a", 10), asker("b", 20));
    assert_eq!(t.take(&a, 8, now), 8);
    assert_eq!(t.take(&b, 8, now), 0);
    assert_eq!(t.take(&b, 2, now), 0);
    assert_eq!(t.queued(), 1);
    assert_eq!(t.next_batch(&a, 6, now), 6);
    assert_eq!(woken_names(&mut t), ["b"], "b now wants 2");
    assert_eq!(t.take(&b, 8, now), 2, "set aside: 2");
}

#[test]
fn wants_are_capped_and_zero_cap_is_one() {
    let now = Instant::now();
    assert_eq!(Turns::new(0, 1).take(&asker("a", 1), 5, now), 1);
    assert_eq!(Turns::new(4, 1).take(&asker("a", 1), 100, now), 4);
    assert_eq!(Turns::new(4, 1).take(&asker("a", 1), 0, now), 1);
    assert_eq!(WriteSlots::holders_for(16), 8);
    assert_eq!(WriteSlots::holders_for(1), 1);
    assert_eq!(WriteSlots::holders_for(0), usize::MAX);
}
