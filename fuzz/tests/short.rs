//! A short run of every fuzz target (the long runs, 10 million cases each, are in the README).

#[test]
fn every_target_survives_a_short_run() {
    for t in ioasis_fuzz::TARGETS {
        let cases = match t.name {
            "scenario-toml" | "platform-toml" | "intent-toml" | "vtd-vs-mock" => 300,
            _ => 3000,
        };
        let r = ioasis_fuzz::engine::run(&(t.seeds)(), cases, 1, t.one);
        if let Some((input, msg)) = &r.failure {
            panic!("{}: {msg}\ninput: {:?}", t.name, String::from_utf8_lossy(input));
        }
        assert_eq!(r.cases, cases);
        assert!(r.accepted > 0, "{}: nothing accepted: the seeds or the target are wrong", t.name);
    }
}
