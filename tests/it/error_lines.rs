//! berth's one error line names each cause once: no OS error twice, no
//! message joined to itself (issue 12, "Error text printed twice"; issue 8,
//! hygiene). Each case is a real failure of the binary.

use crate::common::*;

/// Asserts that no `: `-separated segment of `line` appears twice.
#[track_caller]
pub fn assert_no_repeated_segment(line: &str) {
    let segments: Vec<&str> = line.split(": ").collect();
    for (i, s) in segments.iter().enumerate() {
        assert!(!segments[..i].contains(s), "{s:?} appears twice in: {line}");
    }
    assert!(line.matches("(os error").count() <= 1, "an OS error appears twice in: {line}");
}

/// Runs berth, expects a provisioning failure, and checks its one line.
#[track_caller]
fn failure(env: &Env, args: &[&str]) -> String {
    let line = env.run(args).provision_failure();
    eprintln!("{args:?} -> {line}");
    assert_no_repeated_segment(&line);
    line
}

#[test]
fn bad_run_options_are_said_once() {
    let env = Env::new();
    let line = failure(&env, &["run", "-e", "A B=1", "busybox", "--", "true"]);
    assert!(line.contains("\"A B\""), "{line}");
    let line = failure(&env, &["run", "--name", "a/b", "busybox", "--", "true"]);
    assert!(line.contains("\"a/b\""), "{line}");
    let line = failure(&env, &["run", "-w", "rel", "busybox", "--", "true"]);
    assert!(line.contains("\"rel\""), "{line}");
}

#[test]
fn missing_files_name_the_os_error_once() {
    let env = Env::new();
    let missing = env.path().join("missing");
    let m = missing.display().to_string();
    let line = failure(&env, &["run", "--pod", &format!("{m}.yaml")]);
    assert!(line.contains("No such file or directory (os error 2)"), "{line}");
    let line = failure(&env, &["pull", "-q", &format!("oci-archive:{m}.tar")]);
    assert!(line.contains("No such file or directory (os error 2)"), "{line}");
    // A directory where the pod file should be.
    let line = failure(&env, &["run", "--pod", &env.path().display().to_string()]);
    assert!(line.contains("(os error 21)"), "{line}");
}

#[test]
fn a_store_that_is_a_file_names_the_os_error_once() {
    let env = Env::new();
    std::fs::create_dir_all(env.root.parent().unwrap()).unwrap();
    std::fs::write(&env.root, b"not a directory").unwrap();
    let layout = env.path().join("layout");
    let img = Image::new(vec![Layer::new(&busybox_tar(), Comp::Gzip, false)]);
    write_oci_layout(&layout, &[LayoutEntry::Image(&img, "v1")]);
    let line = failure(&env, &["pull", "-q", &format!("oci:{}:v1", layout.display())]);
    assert!(line.contains("(os error 20)") || line.contains("(os error 17)"), "{line}");
}

#[test]
fn a_bad_image_reference_in_a_pod_file_has_its_position() {
    let env = Env::new();
    let file = env.path().join("pod.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: main\n    image: \"UPPER/x\"\n",
    )
    .unwrap();
    let line = failure(&env, &["run", "--pod", &file.display().to_string()]);
    let at = format!("{}:8:12: spec.containers[0].image: invalid image reference \"UPPER/x\"", file.display());
    assert!(line.starts_with(&format!("berth: {at}")), "{line}");
}
