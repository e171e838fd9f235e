//! The agent's long-running tasks, supervised: every one of them is meant
//! to run for the life of the process, so one that ends or panics is a
//! fault. The agent then exits non-zero and systemd starts it again, rather
//! than carry on half-alive (a Lease saying Ready while no pod is managed).

use std::future::Future;

use tokio::task::JoinSet;

#[derive(Default)]
pub struct Tasks {
    set: JoinSet<&'static str>,
}

impl Tasks {
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.set.spawn(async move {
            task.await;
            name
        });
    }

    /// Waits for the first task to end and says which and how; never
    /// returns while all of them run (or if there are none).
    pub async fn first_exit(&mut self) -> String {
        match self.set.join_next().await {
            Some(Ok(name)) => format!("the {name} task stopped"),
            Some(Err(e)) if e.is_panic() => {
                let why = e.into_panic();
                let why = why
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| why.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!("a task panicked: {why}")
            }
            Some(Err(e)) => format!("a task was cancelled: {e}"),
            None => std::future::pending().await,
        }
    }

    pub async fn shutdown(&mut self) {
        self.set.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ending_or_panicking_task_is_reported() {
        let mut t = Tasks::default();
        t.spawn("forever", std::future::pending());
        t.spawn("short", async {});
        assert_eq!(t.first_exit().await, "the short task stopped");
        t.spawn("broken", async { panic!("boom") });
        assert_eq!(t.first_exit().await, "a task panicked: boom");
        t.shutdown().await;
    }
}
