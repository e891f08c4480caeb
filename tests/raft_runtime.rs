//! openraft's own conformance suite for async runtimes, run on our glommio adapter.
use fleetlm::raft::GlommioRuntime;

#[test]
fn glommio_runtime_passes_openraft_runtime_suite() {
    openraft_rt::testing::Suite::<GlommioRuntime>::test_all();
}

/// The suite does not check panics; openraft relies on `is_panic` to tell a crashed
/// task from a cancelled one.
#[test]
fn a_panicking_task_is_reported_as_a_panic_and_the_executor_survives() {
    use openraft_rt::AsyncRuntime;
    let mut rt = <GlommioRuntime as AsyncRuntime>::new(1);
    rt.block_on(async {
        let handle = GlommioRuntime::spawn(async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
            7
        });
        let err = handle.await.expect_err("the task panicked");
        assert!(GlommioRuntime::is_panic(&err), "{err}");
        assert!(err.to_string().contains("boom"));
        // Dropping a handle detaches; the task still runs to completion.
        let (tx, rx) = tokio::sync::oneshot::channel();
        drop(GlommioRuntime::spawn(async move {
            GlommioRuntime::sleep(std::time::Duration::from_millis(5)).await;
            tx.send(42).unwrap();
        }));
        assert_eq!(rx.await.unwrap(), 42);
    });
}
