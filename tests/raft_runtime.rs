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

/// What the conformance suite does not check about our single-threaded channels: drops
/// that re-enter the channel, and waiting senders when the receiver goes.
#[test]
fn local_channels_survive_reentrant_drops_and_wake_waiting_senders() {
    use fleetlm::raft::local_channels::LocalMpsc;
    use openraft_rt::{AsyncRuntime, Mpsc, MpscReceiver, MpscSender, MpscWeakSender};
    let mut rt = <GlommioRuntime as AsyncRuntime>::new(1);
    rt.block_on(async {
        // A queued message owns a sender of its own channel (openraft's messages carry
        // responders and channel ends): dropping the receiver drops it, which must not
        // find the channel borrowed.
        struct Holds(#[allow(dead_code)] Option<<LocalMpsc as Mpsc>::Sender<Holds>>);
        let (tx, rx) = <LocalMpsc as Mpsc>::channel::<Holds>(4);
        tx.send(Holds(Some(tx.clone()))).await.unwrap();
        drop(rx);
        assert!(tx.send(Holds(None)).await.is_err(), "the receiver is gone");

        // A sender waiting for room learns that the receiver went away.
        let (tx, rx) = <LocalMpsc as Mpsc>::channel::<u32>(1);
        tx.send(1).await.unwrap();
        let waiting = GlommioRuntime::spawn({
            let tx = tx.clone();
            async move { tx.send(2).await.map_err(|e| e.0) }
        });
        GlommioRuntime::sleep(std::time::Duration::from_millis(5)).await;
        drop(rx);
        assert_eq!(waiting.await.unwrap(), Err(2), "the waiting send fails and returns its message");

        // Weak senders do not keep a channel open.
        let (tx, mut rx) = <LocalMpsc as Mpsc>::channel::<u32>(1);
        let weak = tx.downgrade();
        assert!(weak.upgrade().is_some());
        drop(tx);
        assert!(weak.upgrade().is_none());
        assert_eq!(rx.recv().await, None);
    });
}
