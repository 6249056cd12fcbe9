//! The HCL2 front end's cost next to the JSON path's: a folder of 50 sources (one build,
//! one provisioner using `source.name`, variables and locals) lowered, then prepared, and
//! the JSON template with the same 50 builders prepared. Run by scripts/bench-hcl2.sh
//! (`--ignored`, release build); prints the median of 20 runs of each.

use std::time::{Duration, Instant};

use crate::{prepare, PrepareOptions};

const SOURCES: usize = 50;
const RUNS: usize = 20;

fn hcl_folder(dir: &std::path::Path) {
    let mut vars = String::from("variable \"region\" {\n  default = \"us-east-1\"\n}\n\nvariable \"version\" {\n  default = \"1.2.3\"\n  validation {\n    condition     = can(regex(\"^[0-9.]+$\", var.version))\n    error_message = \"semantic version\"\n  }\n}\n\nlocals {\n  tags = { Version = var.version, Team = \"core\" }\n}\n");
    vars.push('\n');
    std::fs::write(dir.join("variables.pkr.hcl"), vars).unwrap();
    let mut sources = String::new();
    let mut refs = Vec::new();
    for i in 0..SOURCES {
        sources.push_str(&format!(
            "source \"amazon-ebs\" \"s{i}\" {{\n  region        = var.region\n  source_ami    = \"ami-0f8848d57eb4fe2d2\"\n  instance_type = \"t3.micro\"\n  ssh_username  = \"ec2-user\"\n  ami_name      = \"image-{i}-${{var.version}}-{{{{timestamp}}}}\"\n  tags          = merge(local.tags, {{ Name = \"image-{i}\" }})\n\n  launch_block_device_mappings {{\n    device_name = \"/dev/xvda\"\n    volume_size = {}\n    volume_type = \"gp3\"\n  }}\n}}\n\n",
            8 + i % 4
        ));
        refs.push(format!("\"source.amazon-ebs.s{i}\""));
    }
    std::fs::write(dir.join("sources.pkr.hcl"), sources).unwrap();
    let build = format!(
        "build {{\n  sources = [{}]\n\n  provisioner \"shell\" {{\n    inline = [\"echo ${{source.name}} ${{var.version}}\"]\n  }}\n\n  post-processor \"manifest\" {{\n    output = \"manifest.json\"\n  }}\n}}\n",
        refs.join(", ")
    );
    std::fs::write(dir.join("build.pkr.hcl"), build).unwrap();
}

fn json_template() -> String {
    let builders: Vec<serde_json::Value> = (0..SOURCES)
        .map(|i| {
            serde_json::json!({
                "type": "amazon-ebs",
                "name": format!("s{i}"),
                "region": "{{user `region`}}",
                "source_ami": "ami-0f8848d57eb4fe2d2",
                "instance_type": "t3.micro",
                "ssh_username": "ec2-user",
                "ami_name": format!("image-{i}-{{{{user `version`}}}}-{{{{timestamp}}}}"),
                "tags": {"Version": "{{user `version`}}", "Team": "core", "Name": format!("image-{i}")},
                "launch_block_device_mappings": [{"device_name": "/dev/xvda", "volume_size": 8 + i % 4, "volume_type": "gp3"}],
            })
        })
        .collect();
    serde_json::json!({
        "variables": {"region": "us-east-1", "version": "1.2.3"},
        "builders": builders,
        "provisioners": [{"type": "shell", "inline": ["echo {{build_name}} {{user `version`}}"]}],
        "post-processors": [{"type": "manifest", "output": "manifest.json"}],
    })
    .to_string()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[test]
#[ignore = "a benchmark: scripts/bench-hcl2.sh runs it in release mode"]
fn bench_hcl2_folder_of_50_sources_next_to_json() {
    let dir = tempfile::tempdir().unwrap();
    hcl_folder(dir.path());
    let json = json_template();
    let opts = PrepareOptions::new(chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap());
    let (mut lower_t, mut lowered_prepare_t, mut json_t) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let t = Instant::now();
        let h = super::lower(dir.path(), &opts).unwrap_or_else(|p| panic!("{p}"));
        lower_t.push(t.elapsed());
        let t = Instant::now();
        let p = prepare(&h.json(), &h.prepare_options(&opts)).unwrap_or_else(|p| panic!("{p}"));
        lowered_prepare_t.push(t.elapsed());
        assert_eq!(p.builds.len(), SOURCES);
        let t = Instant::now();
        let p = prepare(&json, &opts).unwrap_or_else(|p| panic!("{p}"));
        json_t.push(t.elapsed());
        assert_eq!(p.builds.len(), SOURCES);
    }
    let (lower_m, hcl_prep_m, json_m) =
        (median(lower_t), median(lowered_prepare_t), median(json_t));
    println!("{SOURCES} sources, median of {RUNS} runs:");
    println!("  HCL2 folder: parse + lower          {}", ms(lower_m));
    println!(
        "  HCL2 folder: parse + lower + prepare {}",
        ms(lower_m + hcl_prep_m)
    );
    println!("  JSON template: prepare               {}", ms(json_m));
    assert!(
        lower_m < Duration::from_millis(500),
        "lowering took {}",
        ms(lower_m)
    );
}
