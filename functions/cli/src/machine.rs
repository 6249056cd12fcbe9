//! Packer's `-machine-readable` output: one line per message on stdout,
//! `timestamp,target,type,data...`, where commas inside a field are written
//! `%!(PACKER_COMMA)` and newlines `\n`, so CI tooling written for Packer parses it.

/// One line: `target` is the build name, or empty for messages about the whole run.
pub fn line(timestamp: i64, target: &str, kind: &str, data: &[&str]) -> String {
    let mut fields = vec![timestamp.to_string(), escape(target), escape(kind)];
    fields.extend(data.iter().map(|d| escape(d)));
    fields.join(",")
}

/// Prints [`line`] with the current time.
pub fn print(target: &str, kind: &str, data: &[&str]) {
    println!(
        "{}",
        line(chrono::Utc::now().timestamp(), target, kind, data)
    );
}

fn escape(field: &str) -> String {
    field
        .replace(',', "%!(PACKER_COMMA)")
        .replace('\r', "\\r")
        .replace('\n', "\\n")
}

/// Packer's builder ids, which its artifact lines carry (`artifact,0,builder-id,...`).
pub fn builder_id(builder_type: &str) -> &'static str {
    match builder_type {
        "amazon-ebs" => "mitchellh.amazonebs",
        "amazon-chroot" => "mitchellh.amazon.chroot",
        "amazon-instance" => "mitchellh.amazon.instance",
        "amazon-ebssurrogate" => "mitchellh.amazon.ebssurrogate",
        "amazon-ebsvolume" => "mitchellh.amazon.ebsvolume",
        _ => "amiflow",
    }
}

/// The artifact lines of one build, as Packer prints them: count, builder id, id (the
/// `region:ami` pairs joined by commas, Finalize's `artifact_id`), the human string
/// (Finalize's `artifact`), no files, end.
pub fn artifact_lines(
    timestamp: i64,
    build: &str,
    builder_type: &str,
    id: &str,
    human: &str,
) -> Vec<String> {
    let a = |data: &[&str]| {
        let mut all = vec!["0"];
        all.extend_from_slice(data);
        line(timestamp, build, "artifact", &all)
    };
    vec![
        line(timestamp, build, "artifact-count", &["1"]),
        a(&["builder-id", builder_id(builder_type)]),
        a(&["id", id]),
        a(&["string", human]),
        a(&["files-count", "0"]),
        a(&["end"]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_escaped_as_packer_does() {
        assert_eq!(
            line(1700000000, "web", "ui", &["say", "a,b\nc"]),
            "1700000000,web,ui,say,a%!(PACKER_COMMA)b\\nc"
        );
        assert_eq!(line(5, "", "error-count", &["0"]), "5,,error-count,0");
    }

    #[test]
    fn artifact_lines_carry_the_regions_and_the_builder_id() {
        let lines = artifact_lines(
            7,
            "web",
            "amazon-ebs",
            "us-east-1:ami-1,eu-west-1:ami-2",
            "AMIs were created:\nus-east-1: ami-1\n",
        );
        assert_eq!(
            lines,
            vec![
                "7,web,artifact-count,1",
                "7,web,artifact,0,builder-id,mitchellh.amazonebs",
                "7,web,artifact,0,id,us-east-1:ami-1%!(PACKER_COMMA)eu-west-1:ami-2",
                "7,web,artifact,0,string,AMIs were created:\\nus-east-1: ami-1\\n",
                "7,web,artifact,0,files-count,0",
                "7,web,artifact,0,end",
            ]
        );
    }
}
