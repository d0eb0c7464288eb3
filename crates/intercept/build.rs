//! Build script: the git commit the binary is built from, as `TC_GIT_COMMIT` for `-v`
//! (crates/build-info).

fn main() {
    tc_build_info::emit_git_commit();
}
