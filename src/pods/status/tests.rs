//! Status from runtime state: phases, container states, conditions.

use std::collections::BTreeMap;

use super::*;
use crate::pods::plan::Waiting;
use crate::pods::testing::{World, pod};

fn status_with(w: &World, waiting: &BTreeMap<String, Waiting>) -> PodStatus {
    let node = NodeContext::for_tests("n");
    pod_status(&StatusInput {
        pod: &w.pod,
        observed: &w.obs,
        waiting,
        readiness: &BTreeMap::new(),
        started: &BTreeMap::new(),
        terminating: false,
        failed: None,
        previous: None,
        start_time: None,
        node: &node,
        now: Timestamp::from_second(1_000).unwrap(),
        resize: Default::default(),
    })
}

fn status(w: &World) -> PodStatus {
    status_with(w, &BTreeMap::new())
}

fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
    s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == t).unwrap()
}

fn app<'a>(s: &'a PodStatus, name: &str) -> &'a ContainerStatus {
    s.container_statuses.as_ref().unwrap().iter().find(|c| c.name == name).unwrap()
}

#[test]
fn a_new_pod_is_pending_and_creating() {
    let s = status(&World::new(pod("Always", &[], &["a"])));
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    let a = app(&s, "a");
    assert_eq!(a.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("ContainerCreating"));
    assert_eq!(cond(&s, "Ready").status, "False");
    assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
}

#[test]
fn running_pods_are_ready() {
    let w = World::new(pod("Always", &["i"], &["a"])).sandbox("s", 0, true).container("s", "i", 0, Some(0)).container("s", "a", 2, None);
    let s = status(&w);
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(cond(&s, "Ready").status, "True");
    assert_eq!(cond(&s, "Initialized").status, "True");
    let a = app(&s, "a");
    assert!(a.ready && a.state.as_ref().unwrap().running.is_some());
    assert_eq!(a.restart_count, 2);
    assert_eq!(a.container_id.as_deref(), Some("containerd://a-2"));
    let i = &s.init_container_statuses.as_ref().unwrap()[0];
    assert_eq!(i.state.as_ref().unwrap().terminated.as_ref().unwrap().reason.as_deref(), Some("Completed"));
}

#[test]
fn pods_waiting_on_init_are_pending() {
    let w = World::new(pod("Always", &["i"], &["a"])).sandbox("s", 0, true).container("s", "i", 0, None);
    let s = status(&w);
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(cond(&s, "Initialized").status, "False");
    assert_eq!(cond(&s, "Initialized").message.as_deref(), Some("containers with incomplete status: [i]"));
    assert_eq!(app(&s, "a").state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("PodInitializing"));
}

/// Upstream's InitContainer case "should not start app containers if init
/// containers fail on a RestartAlways pod": Pending, the first init
/// container failed, the second and the app waiting with PodInitializing.
#[test]
fn a_failing_init_container_holds_the_later_ones_and_the_apps_at_pod_initializing() {
    let w = World::new(pod("Always", &["init1", "init2"], &["run1"])).sandbox("s", 0, true).container("s", "init1", 0, Some(1));
    let s = status(&w);
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    let init = s.init_container_statuses.as_ref().unwrap();
    assert_eq!(init[0].state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, 1);
    assert_eq!(init[1].state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("PodInitializing"));
    assert_eq!(app(&s, "run1").state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("PodInitializing"));
    assert_eq!(cond(&s, "Initialized").reason.as_deref(), Some("ContainersNotInitialized"));
    assert_eq!(cond(&s, "Initialized").message.as_deref(), Some("containers with incomplete status: [init1 init2]"));
}

#[test]
fn crash_looping_containers_show_back_off_and_last_state() {
    let w = World::new(pod("Always", &[], &["a"])).sandbox("s", 0, true).container("s", "a", 0, Some(1)).container("s", "a", 1, Some(2));
    let waiting = BTreeMap::from([("a".to_string(), Waiting::new("CrashLoopBackOff", "back-off 10s"))]);
    let s = status_with(&w, &waiting);
    assert_eq!(s.phase.as_deref(), Some("Running"), "Always: restarting counts as running");
    let a = app(&s, "a");
    assert_eq!(a.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("CrashLoopBackOff"));
    let last = a.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (2, Some("Error")));
    assert_eq!(a.restart_count, 1);
}

#[test]
fn finished_pods() {
    let ok = World::new(pod("OnFailure", &[], &["a"])).sandbox("s", 0, false).container("s", "a", 0, Some(0));
    let s = status(&ok);
    assert_eq!(s.phase.as_deref(), Some("Succeeded"));
    assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
    let failed = World::new(pod("Never", &[], &["a", "b"])).sandbox("s", 0, true).container("s", "a", 0, Some(0)).container("s", "b", 0, Some(3));
    assert_eq!(status(&failed).phase.as_deref(), Some("Failed"));
    let partly = World::new(pod("Never", &[], &["a", "b"])).sandbox("s", 0, true).container("s", "a", 0, Some(3)).container("s", "b", 0, None);
    assert_eq!(status(&partly).phase.as_deref(), Some("Running"), "Never: not failed until all are done");
    let init_failed = World::new(pod("Never", &["i"], &["a"])).sandbox("s", 0, true).container("s", "i", 0, Some(1));
    assert_eq!(status(&init_failed).phase.as_deref(), Some("Failed"));
}

#[test]
fn transition_times_hold_while_a_condition_holds() {
    let w = World::new(pod("Always", &[], &["a"])).sandbox("s", 0, true).container("s", "a", 0, None);
    let node = NodeContext::for_tests("n");
    let empty = BTreeMap::new();
    let no_waits = BTreeMap::new();
    let input = |previous, now| StatusInput {
        pod: &w.pod,
        observed: &w.obs,
        waiting: &no_waits,
        readiness: &empty,
        started: &empty,
        terminating: false,
        failed: None,
        previous,
        start_time: None,
        node: &node,
        now: Timestamp::from_second(now).unwrap(),
        resize: Default::default(),
    };
    let first = pod_status(&input(None, 100));
    let second = pod_status(&input(Some(&first), 200));
    assert_eq!(cond(&second, "Ready").last_transition_time, cond(&first, "Ready").last_transition_time);
}

#[test]
fn ephemeral_containers_are_reported_apart_and_never_ready() {
    use crate::pods::testing::with_ephemeral;
    let p = with_ephemeral(pod("Always", &[], &["a"]), "debug", Some("a"));
    let w = World::new(p.clone()).sandbox("s", 0, true).container("s", "a", 0, None);
    let s = status(&w);
    let e = &s.ephemeral_container_statuses.as_ref().unwrap()[0];
    assert_eq!(e.name, "debug");
    assert_eq!(e.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("ContainerCreating"));
    assert_eq!(cond(&s, "Ready").status, "True", "a waiting ephemeral container does not make the pod unready");
    assert!(s.container_statuses.as_ref().unwrap().iter().all(|c| c.name != "debug"));

    let w = World::new(p).sandbox("s", 0, true).container("s", "a", 0, None).container("s", "debug", 0, None);
    let s = status(&w);
    let e = &s.ephemeral_container_statuses.as_ref().unwrap()[0];
    assert!(e.state.as_ref().unwrap().running.is_some());
    assert!(!e.ready);
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert!(status(&World::new(pod("Always", &[], &["a"]))).ephemeral_container_statuses.is_none());
}

#[test]
fn termination_messages_share_12_kib_across_the_pod() {
    let mut w = World::new(pod("Never", &[], &["a", "b"])).sandbox("s", 0, true).container("s", "a", 0, Some(1)).container("s", "b", 0, Some(0));
    for c in &mut w.obs.containers {
        c.message = "é".repeat(5000);
    }
    let st = status(&w);
    for cs in st.container_statuses.unwrap() {
        let m = cs.state.unwrap().terminated.unwrap().message.unwrap();
        assert_eq!(m.len(), 6144, "{}", cs.name);
    }
}

#[test]
fn a_pod_the_node_ended_is_failed_with_the_reason() {
    let w = World::new(pod("Always", &[], &["a"])).sandbox("s", 0, false).container("s", "a", 0, Some(137));
    let node = NodeContext::for_tests("n");
    let failure = PodFailure::deadline_exceeded();
    let st = pod_status(&StatusInput {
        pod: &w.pod,
        observed: &w.obs,
        waiting: &BTreeMap::new(),
        readiness: &BTreeMap::new(),
        started: &BTreeMap::new(),
        terminating: false,
        failed: Some(&failure),
        previous: None,
        start_time: None,
        node: &node,
        now: Timestamp::from_second(1_000).unwrap(),
        resize: Default::default(),
    });
    assert_eq!(st.phase.as_deref(), Some("Failed"), "restartPolicy Always or not");
    assert_eq!(st.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(st.message.as_deref(), Some("Pod was active on the node longer than the specified deadline"));
}
