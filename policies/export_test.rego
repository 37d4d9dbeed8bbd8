# Tests of bulles.export: allow-list, size, findings, provenance (sensitivity, mode, publisher).
package bulles.export_test

import rego.v1

import data.bulles.export

# The tests call export.decide(input, reference data): see export.rego for why.
reference := data.bulles.reference

decide(i) := export.decide(i, reference)

project := {
	"id": "p1",
	"purpose": "research",
	"start_date": "2026-01-01",
	"end_date": "2027-06-30",
	"members": [{"username": "bruno", "role": "owner"}, {"username": "carla", "role": "member"}],
}

open_grant := {"source": "fr-en-ips_ecoles", "sensitivity": "open", "mode": "raw", "publisher": "men-depp"}

internal_grant := {"source": "personnels", "sensitivity": "internal", "mode": "minimised", "publisher": "demo-rennes"}

personal_grant := {"source": "eleves-synthetiques", "sensitivity": "personal", "mode": "pseudonymised", "publisher": "demo-rennes"}

sensitive_grant := {"source": "pai-sante", "sensitivity": "sensitive", "mode": "pseudonymised", "publisher": "demo-sante"}

# The same grant in another access mode.
in_mode(g, m) := object.union(g, {"mode": m})

table := {"path": "outbox/absences.csv", "type": "csv", "size": 2048, "sha256": "9f2c1e0b7a4d3c5e6f8a9b0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6"}

figure := {"path": "outbox/figure.png", "type": "png", "size": 50000}

passed(f) := {"file": f.path, "check": "min_cell_count", "severity": "pass"}

review(f) := {"file": f.path, "check": "dominance", "severity": "review"}

failed(f) := {"file": f.path, "check": "identifiers", "severity": "fail", "detail": "column ine"}

export_input(grants, files, findings) := {
	"project": project,
	"grants": grants,
	"files": files,
	"findings": findings,
	"requester": "bruno",
}

has_reason(d, code) if {
	some r in d.reasons
	startswith(r, concat("", [code, ": "]))
}

refused_for(d, code) if {
	object.keys(d) == {"action", "reviewers", "organisations", "reasons"}
	d.action == "refuse"
	d.reviewers == 0
	d.organisations == []
	has_reason(d, code)
}

# ------------------------------------------------------------------ refusals

test_empty_file_list_refused if {
	i := export_input([open_grant], [], [])
	d := decide(i)
	refused_for(d, "no_files")
}

test_type_outside_the_allow_list_refused if {
	f := {"path": "outbox/model.pkl", "type": "pkl", "size": 100}
	i := export_input([open_grant], [table, f], [passed(table)])
	d := decide(i)
	refused_for(d, "file_type_not_allowed")
}

test_declared_type_must_match_the_name if {
	f := {"path": "outbox/data.parquet", "type": "csv", "size": 100}
	i := export_input([open_grant], [f], [])
	d := decide(i)
	refused_for(d, "file_type_mismatch")
}

test_file_without_extension_refused if {
	f := {"path": "outbox/README", "type": "txt", "size": 100}
	i := export_input([open_grant], [f], [])
	d := decide(i)
	refused_for(d, "file_type_mismatch")
}

test_upper_case_extension_accepted if {
	f := {"path": "outbox/FIGURE.PNG", "type": "PNG", "size": 100}
	i := export_input([open_grant], [f], [])
	d := decide(i)
	d.action == "release"
}

test_size_limit_is_16_mib if {
	at_limit := object.union(table, {"size": 16777216})
	i := export_input([open_grant], [at_limit], [])
	d := decide(i)
	d.action == "release"
}

test_over_the_size_limit_refused if {
	big := object.union(table, {"size": 16777217})
	i := export_input([open_grant], [big], [])
	d := decide(i)
	refused_for(d, "file_too_large")
}

test_failed_check_refused if {
	i := export_input([open_grant], [table], [failed(table)])
	d := decide(i)
	refused_for(d, "check_failed")
}

test_failed_check_refused_even_for_personal_data if {
	i := export_input([personal_grant], [table, figure], [passed(table), failed(figure)])
	d := decide(i)
	refused_for(d, "check_failed")
}

test_requester_must_be_a_member if {
	i := object.union(export_input([open_grant], [table], []), {"requester": "mallory"})
	d := decide(i)
	refused_for(d, "not_a_member")
}

test_empty_input_refused if {
	d := decide({})
	refused_for(d, "no_files")
	has_reason(d, "invalid_project")
}

test_malformed_file_refused if {
	i := export_input([open_grant], [{"path": "outbox/a.csv", "type": "csv", "size": "big"}], [])
	d := decide(i)
	refused_for(d, "invalid_file")
}

test_missing_reference_data_refused if {
	i := export_input([open_grant], [table], [])
	d := export.decide(i, {})
	refused_for(d, "reference_data_missing")
}

# ------------------------------------------------------------------ release

test_open_data_outputs_released if {
	i := export_input([open_grant], [table, figure], [passed(table)])
	d := decide(i)
	d.action == "release"
	d.reviewers == 0
	has_reason(d, "open_data_only")
}

test_bubble_without_grants_released if {
	i := export_input([], [figure], [])
	d := decide(i)
	d.action == "release"
}

test_non_personal_tables_that_pass_released if {
	i := export_input([open_grant, internal_grant], [table], [passed(table)])
	d := decide(i)
	d.action == "release"
	has_reason(d, "tables_passed")
}

# ------------------------------------------------------------------ review

test_open_data_with_a_review_finding_one_reviewer if {
	i := export_input([open_grant], [table], [review(table)])
	d := decide(i)
	d.action == "review"
	d.reviewers == 1
	has_reason(d, "check_needs_review")
}

test_internal_figure_one_reviewer if {
	i := export_input([internal_grant], [figure], [passed(figure)])
	d := decide(i)
	d.action == "review"
	d.reviewers == 1
	has_reason(d, "not_a_table")
}

test_internal_table_without_checks_one_reviewer if {
	i := export_input([internal_grant], [table], [])
	d := decide(i)
	d.action == "review"
	d.reviewers == 1
	has_reason(d, "not_checked")
}

test_personal_outputs_two_reviewers_even_when_every_check_passes if {
	i := export_input([open_grant, personal_grant], [table], [passed(table)])
	d := decide(i)
	d.action == "review"
	d.reviewers == 2
	has_reason(d, "personal_data_review")
	has_reason(d, "review_required")
}

test_sensitive_outputs_two_reviewers if {
	i := export_input([sensitive_grant], [table], [passed(table)])
	d := decide(i)
	d.action == "review"
	d.reviewers == 2
	has_reason(d, "personal_data_review")
}

test_unknown_provenance_two_reviewers if {
	g := {"source": "x", "sensitivity": "classified", "mode": "raw"}
	i := export_input([g], [table], [passed(table)])
	d := decide(i)
	d.action == "review"
	d.reviewers == 2
	has_reason(d, "unknown_sources")
}

test_missing_grants_two_reviewers if {
	i := object.remove(export_input([], [table], [passed(table)]), ["grants"])
	d := decide(i)
	d.action == "review"
	d.reviewers == 2
}

test_unknown_severity_goes_to_review if {
	odd := {"file": table.path, "check": "acro", "severity": "maybe"}
	i := export_input([open_grant], [table], [odd])
	d := decide(i)
	d.action == "review"
	has_reason(d, "unknown_severity")
}

test_reviewer_counts_come_from_reference_data if {
	i := export_input([personal_grant], [table], [passed(table)])
	d := export.decide(i, json.patch(reference, [{"op": "replace", "path": "/reviewers/export/personal", "value": 3}]))
	d.reviewers == 3
}

# ------------------------------------------------------------------ access modes and providers

test_passing_tables_with_an_aggregated_personal_grant_released if {
	i := export_input([open_grant, in_mode(personal_grant, "aggregated")], [table], [passed(table)])
	d := decide(i)
	d.action == "release"
	d.reviewers == 0
	d.organisations == []
	has_reason(d, "tables_passed")
}

test_passing_tables_with_a_synthetic_sensitive_grant_released if {
	i := export_input([in_mode(sensitive_grant, "synthetic")], [table], [passed(table)])
	d := decide(i)
	d.action == "release"
	has_reason(d, "tables_passed")
}

test_passing_tables_with_a_pseudonymised_personal_grant_two_reviewers if {
	i := export_input([personal_grant], [table], [passed(table)])
	d := decide(i)
	object.keys(d) == {"action", "reviewers", "organisations", "reasons"}
	d.action == "review"
	d.reviewers == 2
	d.organisations == []
	has_reason(d, "personal_data_review")
	not has_reason(d, "tables_passed")
}

test_personal_grant_without_a_mode_is_row_level if {
	i := export_input([object.remove(personal_grant, ["mode"])], [table], [passed(table)])
	d := decide(i)
	d.action == "review"
	has_reason(d, "personal_data_review")
}

test_aggregated_personal_figure_goes_to_review if {
	i := export_input([in_mode(personal_grant, "aggregated")], [figure], [passed(figure)])
	d := decide(i)
	d.action == "review"
	d.reviewers == 2
	has_reason(d, "not_a_table")
	not has_reason(d, "personal_data_review")
}

test_sensitive_sources_providers_must_review if {
	other := {"source": "handicap", "sensitivity": "sensitive", "mode": "raw", "publisher": "cd35"}
	i := export_input(
		[personal_grant, sensitive_grant, other, in_mode(sensitive_grant, "aggregated")],
		[table], [passed(table)],
	)
	d := decide(i)
	d.action == "review"
	d.reviewers == 2
	d.organisations == ["cd35", "demo-sante"]
	has_reason(d, "provider_review")
	"provider_review: organisation 'cd35' must be among the reviewers" in d.reasons
	"provider_review: organisation 'demo-sante' must be among the reviewers" in d.reasons
}

test_organisations_empty_on_release_and_refusal if {
	released := decide(export_input([in_mode(sensitive_grant, "aggregated")], [table], [passed(table)]))
	released.action == "release"
	released.organisations == []
	not has_reason(released, "provider_review")
	refused := decide(export_input([sensitive_grant], [table], [failed(table)]))
	refused_for(refused, "check_failed")
	not has_reason(refused, "provider_review")
}

test_sensitive_grant_without_publisher_unknown_sources if {
	anonymous := object.remove(in_mode(sensitive_grant, "aggregated"), ["publisher"])
	i := export_input([anonymous], [table], [passed(table)])
	d := decide(i)
	d.action == "review"
	d.reviewers == 2
	d.organisations == []
	has_reason(d, "unknown_sources")
}

test_sensitive_grant_with_a_non_string_publisher_unknown_sources if {
	odd := object.union(sensitive_grant, {"publisher": 42})
	i := export_input([odd, object.union(sensitive_grant, {"source": "pai-2", "publisher": "cd35"})], [table], [passed(table)])
	d := decide(i)
	d.action == "review"
	d.organisations == ["cd35"]
	has_reason(d, "unknown_sources")
}

test_provider_rule_comes_from_reference_data if {
	i := export_input([personal_grant], [table], [passed(table)])
	d := export.decide(i, json.patch(reference, [{"op": "replace", "path": "/reviewers/export_provider", "value": ["personal", "sensitive"]}]))
	d.action == "review"
	d.organisations == ["demo-rennes"]
	has_reason(d, "provider_review")
}

test_missing_provider_rule_refused if {
	i := export_input([open_grant], [table], [passed(table)])
	d := export.decide(i, json.patch(reference, [{"op": "remove", "path": "/reviewers/export_provider"}]))
	refused_for(d, "reference_data_missing")
}
