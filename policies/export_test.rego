# Tests of bulles.export (first version): allow-list, size, findings, provenance.
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

open_grant := {"source": "fr-en-ips_ecoles", "sensitivity": "open", "mode": "raw"}

internal_grant := {"source": "personnels", "sensitivity": "internal", "mode": "minimised"}

personal_grant := {"source": "eleves-synthetiques", "sensitivity": "personal", "mode": "pseudonymised"}

sensitive_grant := {"source": "pai-sante", "sensitivity": "sensitive", "mode": "aggregated"}

table := {"path": "outbox/absences.csv", "type": "csv", "size": 2048}

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
	object.keys(d) == {"action", "reviewers", "reasons"}
	d.action == "refuse"
	d.reviewers == 0
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
