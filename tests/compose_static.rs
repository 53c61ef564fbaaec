//! Static check of docker-compose.yml against the contest's submission rules (section 6) and
//! the deployment's own design (issue 5), without Docker.
use yaml_rust2::{Yaml, YamlLoader};

fn load(path: &str) -> Yaml {
    let text =
        std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).expect(path);
    YamlLoader::load_from_str(&text)
        .expect("valid YAML")
        .remove(0)
}

fn cpus(y: &Yaml) -> f64 {
    match y {
        Yaml::Real(s) | Yaml::String(s) => s.parse().expect("cpus is a number"),
        Yaml::Integer(i) => *i as f64,
        other => panic!("cpus: {other:?}"),
    }
}

fn megabytes(y: &Yaml) -> u64 {
    let s = y.as_str().expect("memory is a string like 50MB");
    let n = s
        .strip_suffix("MB")
        .unwrap_or_else(|| panic!("memory {s:?} must be written in MB"));
    n.parse().expect("memory MB")
}

#[test]
fn compose_file_follows_the_contest_rules() {
    let doc = load("docker-compose.yml");
    let services = doc["services"].as_hash().expect("services");
    let (mut total_cpus, mut total_mb) = (0.0, 0);
    let mut apis = 0;
    let mut balancers = 0;
    for (name, svc) in services {
        let name = name.as_str().expect("service name");
        assert!(
            svc["network_mode"].is_badvalue(),
            "{name}: no network_mode (bridge only)"
        );
        assert!(svc["privileged"].is_badvalue(), "{name}: no privileged");
        assert!(
            svc["deploy"]["replicas"].is_badvalue(),
            "{name}: no deploy.replicas"
        );
        let limits = &svc["deploy"]["resources"]["limits"];
        assert!(
            !limits.is_badvalue(),
            "{name}: deploy.resources.limits is required"
        );
        total_cpus += cpus(&limits["cpus"]);
        total_mb += megabytes(&limits["memory"]);
        let command: Vec<&str> = svc["command"]
            .as_vec()
            .expect("command")
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        match command.first().copied() {
            Some("api") => apis += 1,
            Some("lb") => {
                balancers += 1;
                let ports: Vec<&str> = svc["ports"]
                    .as_vec()
                    .expect("lb ports")
                    .iter()
                    .filter_map(|p| p.as_str())
                    .collect();
                assert!(
                    ports.iter().any(|p| p.starts_with("9999:")),
                    "the balancer publishes 9999"
                );
            }
            Some("consumer") => {
                let nets: Vec<&str> = svc["networks"]
                    .as_vec()
                    .expect("networks")
                    .iter()
                    .filter_map(|n| n.as_str())
                    .collect();
                assert!(
                    nets.contains(&"payment-processor"),
                    "the consumer reaches the processors"
                );
                let env = &svc["environment"];
                assert_eq!(
                    env["PROCESSOR_DEFAULT_URL"].as_str(),
                    Some("http://payment-processor-default:8080")
                );
                assert_eq!(
                    env["PROCESSOR_FALLBACK_URL"].as_str(),
                    Some("http://payment-processor-fallback:8080")
                );
            }
            other => panic!("{name}: unexpected role {other:?}"),
        }
        // Every service shares the region through the tmpfs volume (merged from the anchor).
        let volumes = if svc["volumes"].is_badvalue() {
            &doc["x-service"]["volumes"]
        } else {
            &svc["volumes"]
        };
        let vols: Vec<&str> = volumes
            .as_vec()
            .expect("volumes")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(
            vols.contains(&"rinha-shm:/shm"),
            "{name} mounts the shared region"
        );
    }
    assert!(apis >= 2, "at least two web servers");
    assert!(balancers >= 1, "a load balancer");
    assert!(
        total_cpus <= 1.5 + 1e-9,
        "CPU limits sum to {total_cpus} > 1.5"
    );
    assert!(total_mb <= 350, "memory limits sum to {total_mb}MB > 350MB");
    let vol = &doc["volumes"]["rinha-shm"]["driver_opts"];
    assert_eq!(vol["type"].as_str(), Some("tmpfs"));
    assert!(
        vol["o"].as_str().is_some_and(|o| o.contains("size=")),
        "the tmpfs has a size"
    );
    assert_eq!(
        doc["networks"]["payment-processor"]["external"].as_bool(),
        Some(true)
    );
}

#[test]
fn the_tmpfs_fits_the_region() {
    let doc = load("docker-compose.yml");
    let o = doc["volumes"]["rinha-shm"]["driver_opts"]["o"]
        .as_str()
        .expect("o");
    let size = o
        .split(',')
        .find_map(|kv| kv.strip_prefix("size="))
        .expect("size=");
    let mb: u64 = size.trim_end_matches('m').parse().expect("size in m");
    let need = rinha::shm::Layout::of(&rinha::shm::RegionConfig::default())
        .expect("layout")
        .size as u64;
    assert!(
        mb * 1024 * 1024 >= need,
        "tmpfs {mb}m is smaller than the region ({need} bytes)"
    );
}

#[test]
fn processors_compose_mirrors_the_contests() {
    let doc = load("contest/processors.compose.yml");
    for (name, port, fee) in [
        ("payment-processor-default", "8001:8080", "0.07"),
        ("payment-processor-fallback", "8002:8080", "0.10"),
    ] {
        let svc = &doc["services"][name];
        let ports: Vec<&str> = svc["ports"]
            .as_vec()
            .expect("ports")
            .iter()
            .filter_map(|p| p.as_str())
            .collect();
        assert_eq!(ports, vec![port]);
        let cmd: Vec<&str> = svc["command"]
            .as_vec()
            .expect("command")
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        assert!(cmd.windows(2).any(|w| w == ["--fee", fee]), "{name} fee");
    }
    assert_eq!(
        doc["networks"]["payment-processor"]["name"].as_str(),
        Some("payment-processor")
    );
}
