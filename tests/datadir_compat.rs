//! A data dir written by an earlier build opens in this one and answers exactly as that
//! build did: the on-disk formats (WAL records, Raft metadata, snapshot, message bodies)
//! did not change under us. The fixtures come from `tests/fixtures/make-datadir.sh`
//! run with the earlier binary (the commit is in their names).
mod common;

use common::{Server, msg_body};

fn opens_and_answers_as_written(name: &str) {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(fixtures.join(format!("{name}.tar.gz")))
        .arg("-C")
        .arg(tmp.path())
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed: {status}");
    let answers: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures.join(format!("{name}.answers.json"))).unwrap()).unwrap();
    let s = Server::start(&tmp.path().join("data"), &[]);
    for (path, expected) in answers.as_object().unwrap() {
        let r = s.req("GET", path, "");
        assert_eq!(u64::from(r.status), expected["status"], "GET {path}");
        assert_eq!(r.json(), expected["body"], "GET {path}");
    }
    // And it goes on from there: the next append gets the next seq, after a restart too.
    let r = s.req("POST", "/v1/contexts/a/messages", &msg_body("after the upgrade"));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["seq"], 31);
    let mut s = s;
    s.restart();
    assert_eq!(s.req("GET", "/v1/contexts/a", "").json()["last_seq"], 31);
}

#[test]
fn a_data_dir_written_at_d64b5b2_opens_and_answers_the_same() {
    opens_and_answers_as_written("datadir-d64b5b2");
}
