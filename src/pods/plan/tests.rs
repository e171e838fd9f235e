//! Table-style tests of the planner: a spec, a runtime state, the actions.

use std::time::Duration;

use super::*;
use crate::pods::backoff::{Backoff, BackoffConfig, Failure};
use crate::pods::testing::{NOW, S, World, pod, spec_container, with_ephemeral};
use crate::runtime::labels;

fn start(name: &str, kind: ContainerKind, attempt: u32, restart_after: Option<Failure>) -> Action {
    Action::StartContainer { name: name.into(), kind, attempt, restart_after }
}

const EXITED_AT: Option<Failure> = Some(Failure { started: UnixNanos(NOW - 6 * S), at: UnixNanos(NOW - 5 * S) });

#[test]
fn a_new_pod_gets_a_sandbox_and_its_containers() {
    let w = World::new(pod("Always", &[], &["a", "b"]));
    assert_eq!(
        w.plan().actions,
        vec![Action::CreateSandbox { attempt: 0 }, start("a", ContainerKind::App, 0, None), start("b", ContainerKind::App, 0, None)]
    );
}

#[test]
fn init_containers_run_one_at_a_time_in_order() {
    let p = pod("Always", &["i1", "i2"], &["app"]);
    let w = World::new(p.clone());
    assert_eq!(w.plan().actions, vec![Action::CreateSandbox { attempt: 0 }, start("i1", ContainerKind::Init, 0, None)]);

    let w = World::new(p.clone()).sandbox("s", 0, true).container("s", "i1", 0, None);
    let plan = w.plan();
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    assert_eq!(plan.waiting["app"].reason, "PodInitializing");

    let w = World::new(p.clone()).sandbox("s", 0, true).container("s", "i1", 0, Some(0));
    assert_eq!(w.plan().actions, vec![start("i2", ContainerKind::Init, 0, None)]);

    let w = World::new(p).sandbox("s", 0, true).container("s", "i1", 0, Some(0)).container("s", "i2", 0, Some(0));
    assert_eq!(w.plan().actions, vec![start("app", ContainerKind::App, 0, None)]);
}

#[test]
fn a_failing_init_container_blocks_the_app_and_restarts() {
    let w = World::new(pod("Always", &["i1"], &["app"])).sandbox("s", 0, true).container("s", "i1", 0, Some(1));
    let plan = w.plan();
    assert_eq!(plan.actions, vec![start("i1", ContainerKind::Init, 1, EXITED_AT)]);
    assert!(!plan.actions.iter().any(|a| matches!(a, Action::StartContainer { name, .. } if name == "app")));
}

#[test]
fn a_failing_init_container_under_never_fails_the_pod() {
    let w = World::new(pod("Never", &["i1"], &["app"])).sandbox("s", 0, true).container("s", "i1", 0, Some(1));
    assert_eq!(finished_phase(w.pod.spec.as_ref().unwrap(), &w.obs), Some("Failed"));
    assert_eq!(w.plan().actions, vec![Action::KillPod], "only the sandbox is stopped");
}

#[test]
fn restart_policies_against_exit_codes() {
    let cases = [
        ("Always", 0, true),
        ("Always", 1, true),
        ("OnFailure", 0, false),
        ("OnFailure", 1, true),
        ("Never", 0, false),
        ("Never", 1, false),
    ];
    for (policy, code, restarts) in cases {
        let w = World::new(pod(policy, &[], &["app"])).sandbox("s", 0, true).container("s", "app", 0, Some(code));
        let plan = w.plan();
        let started = plan.actions.contains(&start("app", ContainerKind::App, 1, EXITED_AT));
        assert_eq!(started, restarts, "{policy} exit {code}: {:?}", plan.actions);
        if !restarts {
            assert_eq!(plan.actions, vec![Action::KillPod], "{policy} exit {code}: the finished pod's sandbox stops");
            let phase = finished_phase(w.pod.spec.as_ref().unwrap(), &w.obs);
            assert_eq!(phase, Some(if code == 0 { "Succeeded" } else { "Failed" }));
        }
    }
}

#[test]
fn crash_loop_back_off_holds_the_restart() {
    let w = World::new(pod("Always", &[], &["app"])).sandbox("s", 0, true).container("s", "app", 3, Some(1));
    let mut b = Backoff::new(BackoffConfig { initial: Duration::from_secs(10), ..BackoffConfig::default() });
    let key = backoff_key(&spec_container(&w.pod, "app"));
    b.next(&key, Failure { started: UnixNanos(NOW - 101 * S), at: UnixNanos(NOW - 100 * S) }); // an earlier crash put it on back-off
    let plan = w.plan_with(&b);
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    assert_eq!(plan.waiting["app"].reason, "CrashLoopBackOff");
    assert!(plan.waiting["app"].message.starts_with("back-off 10s restarting failed container=app"), "{}", plan.waiting["app"].message);
    assert_eq!(plan.wake_at, Some(UnixNanos(NOW - 5 * S + 10 * S)));
}

#[test]
fn running_containers_are_left_alone() {
    let w = World::new(pod("Always", &["i1"], &["a"])).sandbox("s", 0, true).container("s", "i1", 0, Some(0)).container("s", "a", 0, None);
    let plan = w.plan();
    assert!(plan.actions.is_empty(), "adoption: nothing to do for a running pod: {:?}", plan.actions);
    assert!(plan.waiting.is_empty());
}

#[test]
fn a_changed_spec_replaces_the_container() {
    let mut w = World::new(pod("Always", &[], &["a"])).sandbox("s", 0, true).container("s", "a", 0, None);
    w.obs.containers[0].annotations.insert(labels::CONTAINER_HASH.into(), "old".into());
    assert_eq!(
        w.plan().actions,
        vec![
            Action::KillContainer { id: "a-0".into(), name: "a".into(), reason: KillReason::SpecChanged },
            start("a", ContainerKind::App, 1, None)
        ]
    );
}

#[test]
fn a_dead_sandbox_is_replaced_and_init_reruns() {
    let w = World::new(pod("Always", &["i1"], &["a"]))
        .sandbox("s0", 0, false)
        .container("s0", "i1", 0, Some(0))
        .container("s0", "a", 0, None);
    assert_eq!(
        w.plan().actions,
        vec![Action::KillPod, Action::CreateSandbox { attempt: 1 }, start("i1", ContainerKind::Init, 1, EXITED_AT)]
    );
}

#[test]
fn never_pods_do_not_get_a_second_sandbox() {
    let w = World::new(pod("Never", &[], &["a", "b"])).sandbox("s0", 0, false).container("s0", "a", 0, Some(0));
    let plan = w.plan();
    assert!(!plan.actions.iter().any(|a| matches!(a, Action::CreateSandbox { .. })), "{:?}", plan.actions);
}

#[test]
fn sidecars_only_need_to_run_and_always_restart() {
    let mut p = pod("Never", &["side", "i2"], &["app"]);
    p.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0].restart_policy = Some("Always".into());
    let w = World::new(p.clone()).sandbox("s", 0, true).container("s", "side", 0, None);
    assert_eq!(w.plan().actions, vec![start("i2", ContainerKind::Init, 0, None)], "a running sidecar lets the next init start");
    let w = World::new(p.clone())
        .sandbox("s", 0, true)
        .container("s", "side", 0, Some(0))
        .container("s", "i2", 0, Some(0));
    assert_eq!(w.plan().actions, vec![start("side", ContainerKind::Sidecar, 1, EXITED_AT)], "even under Never");
    let w = World::new(p)
        .sandbox("s", 0, true)
        .container("s", "side", 0, None)
        .container("s", "i2", 0, Some(0))
        .container("s", "app", 0, Some(0));
    assert_eq!(w.plan().actions, vec![Action::KillPod], "the pod is done once the app is: the sidecar is stopped");
}

#[test]
fn dead_containers_are_collected_keeping_the_newest() {
    let w = World::new(pod("Always", &[], &["a"]))
        .sandbox("s", 0, true)
        .container("s", "a", 0, Some(1))
        .container("s", "a", 1, Some(1))
        .container("s", "a", 2, None);
    let plan = w.plan();
    assert_eq!(plan.actions, vec![Action::RemoveContainer { id: "a-0".into() }]);
}

#[test]
fn between_a_crash_and_its_restart_the_previous_exit_stays_for_last_state() {
    let w = World::new(pod("Always", &[], &["a"]))
        .sandbox("s", 0, true)
        .container("s", "a", 0, Some(1))
        .container("s", "a", 1, Some(1))
        .container("s", "a", 2, Some(1));
    let removed: Vec<Action> = w.plan().actions.into_iter().filter(|a| matches!(a, Action::RemoveContainer { .. })).collect();
    assert_eq!(removed, vec![Action::RemoveContainer { id: "a-0".into() }], "a-1 is the lastState of the dead a-2");
}

#[test]
fn an_ended_pod_is_stopped_and_never_restarted() {
    let w = World::new(pod("Always", &[], &["a"])).sandbox("s", 0, true).container("s", "a", 0, None);
    assert_eq!(end(&w.obs).actions, vec![Action::KillPod]);
    let mut stopped = World::new(pod("Always", &[], &["a"])).sandbox("s", 0, false).container("s", "a", 0, Some(137));
    assert!(end(&stopped.obs).actions.is_empty(), "nothing restarts and the dead container stays");
    stopped.obs.sandboxes[0].ready = false;
    assert!(end(&stopped.obs).actions.is_empty());
}

#[test]
fn old_sandboxes_go_once_empty() {
    let w = World::new(pod("Always", &[], &["a"]))
        .sandbox("s0", 0, false)
        .sandbox("s1", 1, true)
        .container("s1", "a", 1, None);
    assert_eq!(w.plan().actions, vec![Action::RemoveSandbox { id: "s0".into() }]);
}

#[test]
fn no_network_no_sandbox() {
    let w = World::new(pod("Always", &[], &["a"]));
    let plan = plan(&PlanInput {
        pod: &w.pod,
        observed: &w.obs,
        backoff: &Backoff::default(),
        now: UnixNanos(NOW),
        network_ready: false,
        unhealthy: &Default::default(),
        resize_restart: &Default::default(),
    });
    assert!(plan.actions.is_empty());
    assert_eq!(plan.waiting["a"].reason, "ContainerCreating");
}

#[test]
fn teardown_stops_then_removes_everything() {
    let w = World::new(pod("Always", &[], &["a"])).sandbox("s", 0, true).container("s", "a", 0, None);
    assert_eq!(
        teardown(&w.obs),
        vec![Action::KillPod, Action::RemoveContainer { id: "a-0".into() }, Action::RemoveSandbox { id: "s".into() }]
    );
}

#[test]
fn a_sidecar_restarting_after_start_up_does_not_hold_the_apps() {
    let mut p = pod("Always", &["side"], &["app"]);
    p.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0].restart_policy = Some("Always".into());
    let w = World::new(p).sandbox("s", 0, true).container("s", "side", 0, Some(1)).container("s", "app", 0, Some(1));
    let plan = w.plan();
    assert_eq!(
        plan.actions,
        vec![start("side", ContainerKind::Sidecar, 1, EXITED_AT), start("app", ContainerKind::App, 1, EXITED_AT)],
        "both restart; the app is not held behind the sidecar"
    );
    assert!(!plan.waiting.values().any(|w| w.reason == "PodInitializing"));
}

#[test]
fn a_failed_start_left_in_an_old_sandbox_is_collected() {
    let mut w = World::new(pod("Always", &[], &["a"])).sandbox("s0", 0, false).container("s0", "a", 0, None).sandbox("s1", 1, true).container("s1", "a", 1, None);
    w.obs.containers[1].phase = ContainerPhase::Created;
    assert_eq!(w.plan().actions, vec![Action::RemoveContainer { id: "a-0".into() }, Action::RemoveSandbox { id: "s0".into() }]);
}

#[test]
fn a_failed_liveness_probe_kills_and_the_policy_restarts() {
    let mut w = World::new(pod("Always", &[], &["a"])).sandbox("s", 0, true).container("s", "a", 0, None);
    w.unhealthy.insert("a-0".into(), KillReason::LivenessFailed);
    assert_eq!(w.plan().actions, vec![Action::KillContainer { id: "a-0".into(), name: "a".into(), reason: KillReason::LivenessFailed }]);
    // Once it has exited, the restart policy applies as to any exit.
    let w = World::new(pod("Always", &[], &["a"])).sandbox("s", 0, true).container("s", "a", 0, Some(137));
    assert_eq!(w.plan().actions, vec![start("a", ContainerKind::App, 1, EXITED_AT)]);
}

#[test]
fn an_ephemeral_container_starts_once_and_is_never_restarted() {
    let p = with_ephemeral(pod("Always", &["i1"], &["app"]), "debug", Some("app"));
    // No sandbox yet: the sandbox and the first init container come first;
    // the ephemeral container waits for a running sandbox.
    assert_eq!(World::new(p.clone()).plan().actions, vec![Action::CreateSandbox { attempt: 0 }, start("i1", ContainerKind::Init, 0, None)]);
    // A stuck init container can be debugged: it starts before init is done.
    let w = World::new(p.clone()).sandbox("s", 0, true).container("s", "i1", 0, None);
    assert_eq!(w.plan().actions, vec![start("debug", ContainerKind::Ephemeral, 0, None)]);
    let w = World::new(p.clone()).sandbox("s", 0, true).container("s", "i1", 0, Some(0)).container("s", "app", 0, None);
    assert_eq!(w.plan().actions, vec![start("debug", ContainerKind::Ephemeral, 0, None)]);
    // Once it ran, whatever its exit, it stays as it is.
    for exit in [Some(0), Some(1), None] {
        let w = World::new(p.clone()).sandbox("s", 0, true).container("s", "i1", 0, Some(0)).container("s", "app", 0, None).container("s", "debug", 0, exit);
        assert!(w.plan().actions.is_empty(), "exit {exit:?}: {:?}", w.plan().actions);
    }
    // A new sandbox does not bring it back.
    let w = World::new(p).sandbox("s", 0, false).container("s", "debug", 0, Some(137)).container("s", "i1", 0, Some(0));
    assert!(!w.plan().actions.iter().any(|a| matches!(a, Action::StartContainer { name, .. } if name == "debug")));
}

#[test]
fn an_ephemeral_container_does_not_keep_a_finished_pod_alive() {
    let p = with_ephemeral(pod("Never", &[], &["app"]), "debug", None);
    let w = World::new(p).sandbox("s", 0, true).container("s", "app", 0, Some(0)).container("s", "debug", 0, None);
    assert_eq!(finished_phase(w.pod.spec.as_ref().unwrap(), &w.obs), Some("Succeeded"));
    assert_eq!(w.plan().actions, vec![Action::KillPod]);
}

#[test]
fn a_resize_that_needs_a_restart_replaces_the_container_at_once() {
    let mut w = World::new(pod("Never", &[], &["a"])).sandbox("s0", 0, true).container("s0", "a", 0, None);
    w.resize_restart.insert("a-0".into());
    let actions = w.plan().actions;
    assert_eq!(actions[0], Action::KillContainer { id: "a-0".into(), name: "a".into(), reason: KillReason::Resize });
    assert!(matches!(&actions[1], Action::StartContainer { name, restart_after: None, .. } if name == "a"), "{actions:?}");
}
