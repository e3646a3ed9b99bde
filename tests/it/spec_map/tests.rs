//! Unit tests for the spec map comparison: each kind of disagreement makes the check fail.

use super::*;

const HEADER: &str = "api\tmethod\tpath\tstatus\ttest\tnote\n";
const EXTENSION_HEADER: &str = "method\tpath\treason\n";

/// Runs the comparison on a small map and asserts which problems it reports, by substring.
fn check(map: &str, extensions: &str, served: &[(&str, &str)], expected: &[&str]) {
    let rows = parse_endpoints(&format!("{HEADER}{map}")).expect("the map parses");
    let extensions =
        parse_extensions(&format!("{EXTENSION_HEADER}{extensions}")).expect("extensions parse");
    let served: Vec<(String, String)> = served
        .iter()
        .map(|(method, path)| (method.to_string(), path.to_string()))
        .collect();
    let problems = compare(&rows, &extensions, &served);
    assert_eq!(problems.len(), expected.len(), "problems: {problems:#?}");
    for (problem, expected) in problems.iter().zip(expected) {
        assert!(
            problem.contains(expected),
            "`{problem}` does not contain `{expected}`"
        );
    }
}

const VERSIONS: &str =
    "client-server\tGET\t/_matrix/client/versions\timplemented\tget_versions\t\n";
const ALIAS_MISSING: &str =
    "client-server\tGET\t/_matrix/client/v3/directory/room/{roomAlias}\tmissing\t\t\n";

#[test]
fn agreeing_map_and_router_pass() {
    let map = format!("{VERSIONS}{ALIAS_MISSING}");
    check(&map, "", &[("GET", "/_matrix/client/versions")], &[]);
}

#[test]
fn parameter_names_do_not_matter() {
    let map = "client-server\tGET\t/_matrix/client/v3/directory/room/{roomAlias}\timplemented\tget_alias\t\n";
    check(
        map,
        "",
        &[("GET", "/_matrix/client/v3/directory/room/{room_alias}")],
        &[],
    );
}

#[test]
fn served_endpoint_marked_missing_fails() {
    check(
        ALIAS_MISSING,
        "",
        &[("GET", "/_matrix/client/v3/directory/room/{room_alias}")],
        &["spec/endpoints.tsv:2: the router serves GET /_matrix/client/v3/directory/room/{roomAlias} but the map says missing"],
    );
}

#[test]
fn claimed_endpoint_not_served_fails() {
    check(
        VERSIONS,
        "",
        &[],
        &["GET /_matrix/client/versions is marked implemented but the router does not serve it"],
    );
    let other_method = "client-server\tPOST\t/_matrix/client/versions\tpartial\tget_versions\tno unstable features\n";
    check(
        other_method,
        "",
        &[("GET", "/_matrix/client/versions")],
        &[
            "neither in the spec map",
            "POST /_matrix/client/versions is marked partial but the router does not serve it",
        ],
    );
}

#[test]
fn a_second_form_of_an_endpoint_is_served_by_its_route() {
    let both = "client-server\tPOST\t/_matrix/client/v3/rooms/{roomId}/invite\timplemented\tinvite\t\n\
                client-server\tPOST\t/_matrix/client/v3/rooms/{roomId}/invite \timplemented\tinvite\t\n";
    check(
        both,
        "",
        &[("POST", "/_matrix/client/v3/rooms/{room_id}/invite")],
        &[],
    );
    check(
        both,
        "",
        &[],
        &[
            "POST /_matrix/client/v3/rooms/{roomId}/invite is marked implemented",
            "POST /_matrix/client/v3/rooms/{roomId}/invite  is marked implemented",
        ],
    );
}

#[test]
fn unknown_route_needs_an_extension() {
    let served = [
        ("GET", "/_plait/v1/health"),
        ("POST", "/_synapse/admin/v1/register"),
    ];
    check(
        "",
        "",
        &served,
        &[
            "serves GET /_plait/v1/health, which is neither",
            "serves POST /_synapse/admin/v1/register, which is neither",
        ],
    );
    let extensions =
        "GET\t/_plait/v1/health\tliveness probe\n*\t/_synapse/admin/*\tsynapse admin API\n";
    check("", extensions, &served, &[]);
}

#[test]
fn extensions_must_be_served_explained_and_outside_the_spec() {
    check(
        VERSIONS,
        "GET\t/_matrix/client/versions\tdouble\nGET\t/_plait/v1/health\t\n",
        &[("GET", "/_matrix/client/versions")],
        &[
            "spec/extensions.tsv:2: GET /_matrix/client/versions covers spec endpoint GET /_matrix/client/versions",
            "spec/extensions.tsv:3: GET /_plait/v1/health gives no reason",
            "spec/extensions.tsv:3: GET /_plait/v1/health matches no route",
        ],
    );
}

#[test]
fn claimed_rows_need_a_test_and_partial_rows_a_note() {
    let map = "client-server\tGET\t/_matrix/client/versions\timplemented\t\t\n\
               client-server\tGET\t/_matrix/media/v3/config\tpartial\tget_media_config\tdeprecated\n";
    check(
        map,
        "",
        &[
            ("GET", "/_matrix/client/versions"),
            ("GET", "/_matrix/media/v3/config"),
        ],
        &[
            "versions is marked implemented but names no test",
            "config is partial but its note does not say",
        ],
    );
}

#[test]
fn repeated_rows_fail() {
    let map = format!("{ALIAS_MISSING}client-server\tGET\t/_matrix/client/v3/directory/room/{{alias}}\tmissing\t\t\n");
    check(
        &map,
        "",
        &[],
        &["spec/endpoints.tsv:3: GET /_matrix/client/v3/directory/room/{alias} repeats line 2"],
    );
}

#[test]
fn malformed_files_are_rejected() {
    assert!(parse_endpoints("method\tpath\n").is_err());
    let errors = parse_endpoints(&format!("{HEADER}chat\tGET\t/x\tdone\t\t\n")).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(parse_extensions(&format!("{EXTENSION_HEADER}GET\t/x\ta\tb\n")).is_err());
}

#[test]
fn named_tests_must_exist() {
    let rows = parse_endpoints(&format!(
        "{HEADER}client-server\tGET\t/a\timplemented\tit::versions::get_versions, complement:TestVersions\t\n\
         client-server\tGET\t/b\timplemented\tno_such_test\t\n"
    ))
    .unwrap();
    let functions = function_names("#[test]\nfn get_versions() {}\nasync fn other() {}");
    let problems = check_named_tests(&rows, &functions.into_iter().collect());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("`no_such_test`"));
}

#[test]
fn coverage_counts_implemented_and_partial() {
    let rows = parse_endpoints(&format!(
        "{HEADER}{VERSIONS}{ALIAS_MISSING}federation\tGET\t/f\tpartial\tt\tn\n"
    ))
    .unwrap();
    assert_eq!(
        coverage(&rows),
        [
            "client-server: 1 of 2 endpoints",
            "federation: 1 of 1 endpoints",
            "application-service: 0 of 0 endpoints"
        ]
    );
}

#[test]
fn normalise_erases_parameter_names() {
    assert_eq!(
        normalise("/rooms/{roomId}/state/{eventType}/{stateKey}"),
        "/rooms/{}/state/{}/{}"
    );
    assert_eq!(normalise("/versions"), "/versions");
}
