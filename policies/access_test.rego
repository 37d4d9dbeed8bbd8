# Tests of bulles.access: one group per row of the table in policies/README.md.
# The tests call access.decide(input, reference data) rather than `decision with input as ...`:
# see access.rego for why.
package bulles.access_test

import rego.v1

import data.bulles.access

reference := data.bulles.reference

decide(i) := access.decide(i, reference)

# ------------------------------------------------------------------ fixtures

project := {
	"id": "p1",
	"purpose": "research",
	"legal_basis": "public_task",
	"dpia_reference": "AIPD-2026-01",
	"start_date": "2026-01-01",
	"end_date": "2027-06-30",
	"members": [{"username": "bruno", "role": "owner"}, {"username": "chloe", "role": "member"}],
}

# The shape of catalog/examples/eleves-synthetiques.yaml, cut down.
pupils := {
	"id": "eleves-synthetiques",
	"publisher": "demo-rennes",
	"sensitivity": "personal",
	"legal_basis": "public_task",
	"allowed_purposes": ["research", "public_policy_evaluation", "statistics"],
	"access_modes": ["pseudonymised", "generalised", "aggregated", "synthetic"],
	"retention": "P5Y",
	"schema": [
		{"name": "ine", "type": "string", "role": "identifier"},
		{"name": "birth_date", "type": "date", "role": "quasi_identifier", "generalisation": {"to": "year"}},
		{"name": "sex", "type": "string", "role": "quasi_identifier"},
		{"name": "commune", "type": "string", "role": "quasi_identifier", "generalisation": {"to": "departement"}},
		{"name": "level", "type": "string"},
		{"name": "disability_plan", "type": "boolean", "role": "sensitive"},
		{"name": "absences_half_days", "type": "int64", "generalisation": {"to": "band", "width": 5}},
		{"name": "grade_maths", "type": "float64", "role": "attribute"},
	],
}

# The shape of catalog/examples/fr-en-ips_ecoles.yaml, cut down.
ips := {
	"id": "fr-en-ips_ecoles",
	"publisher": "demo-rennes",
	"sensitivity": "open",
	"allowed_purposes": ["research", "public_policy_evaluation", "statistics", "service_improvement", "teaching"],
	"access_modes": ["raw", "minimised", "pseudonymised", "generalised", "aggregated", "synthetic"],
	"schema": [
		{"name": "UAI", "type": "string"},
		{"name": "Secteur", "type": "string"},
		{"name": "IPS", "type": "float64"},
	],
}

internal := {
	"id": "personnels-etablissements",
	"publisher": "region-bretagne",
	"sensitivity": "internal",
	"access_modes": ["minimised", "pseudonymised", "aggregated"],
	"schema": [
		{"name": "agent_id", "type": "string", "role": "identifier"},
		{"name": "uai", "type": "string"},
		{"name": "fte", "type": "float64"},
	],
}

# Health data about pupils: the provider allows only summary modes.
health := {
	"id": "pai-sante",
	"publisher": "demo-rennes",
	"sensitivity": "sensitive",
	"legal_basis": "public_task",
	"allowed_purposes": ["research"],
	"access_modes": ["aggregated", "synthetic"],
	"retention": "P18M",
	"schema": [
		{"name": "ine", "type": "string", "role": "identifier"},
		{"name": "uai", "type": "string", "role": "quasi_identifier"},
		{"name": "pai", "type": "boolean", "role": "sensitive"},
	],
}

# The same, with a provider that explicitly allows row-level access.
health_open := object.union(health, {"access_modes": ["pseudonymised", "generalised", "aggregated", "synthetic"]})

request(columns) := {"columns": columns, "justification": null, "mode": null, "requester": "bruno"}

asking(columns, mode) := object.union(request(columns), {"mode": mode})

justification := "Appariement individuel avec les résultats aux évaluations nationales de 6e"

query(src, req) := {"now": "2026-11-22", "project": project, "source": src, "request": req}

for_project(src, req, changes) := {"now": "2026-11-22", "project": object.union(project, changes), "source": src, "request": req}

has_reason(d, code) if {
	some r in d.reasons
	startswith(r, concat("", [code, ": "]))
}

complete(d) if {
	object.keys(d) == {"status", "mode", "parameters", "expiry", "reasons", "reviewers", "notify"}
	object.keys(d.parameters) == {"columns", "pseudonymised", "generalised", "dropped", "k", "threshold"}
	count(d.reasons) > 0
}

denied_for(d, code) if {
	complete(d)
	d.status == "denied"
	d.mode == null
	d.expiry == null
	d.reviewers == []
	d.parameters.columns == []
	has_reason(d, code)
}

# ------------------------------------------------------------------ open data

test_open_source_granted_raw if {
	i := query(ips, request(["UAI", "IPS"]))
	d := decide(i)
	complete(d)
	d.status == "granted"
	d.mode == "raw"
	d.parameters.columns == ["UAI", "IPS"]
	d.parameters.dropped == []
	d.parameters.k == 5
	d.parameters.threshold == 10
	d.reviewers == []
	d.notify == []
	d.expiry == "2027-06-30"
	startswith(d.reasons[0], "open_source: ")
}

test_open_source_all_columns_when_none_named if {
	i := query(ips, {"requester": "bruno"})
	d := decide(i)
	d.status == "granted"
	d.parameters.columns == ["UAI", "Secteur", "IPS"]
}

test_open_source_raw_needs_no_justification if {
	i := query(ips, asking(["IPS"], "raw"))
	d := decide(i)
	d.status == "granted"
	d.mode == "raw"
	not has_reason(d, "raw_needs_justification")
}

test_open_source_more_closed_mode_on_request if {
	i := query(ips, asking(["Secteur", "IPS"], "aggregated"))
	d := decide(i)
	d.status == "granted"
	d.mode == "aggregated"
}

test_open_source_walks_to_an_allowed_mode if {
	i := query(object.union(ips, {"access_modes": ["aggregated", "synthetic"]}), request(["IPS"]))
	d := decide(i)
	d.status == "granted"
	d.mode == "aggregated"
	has_reason(d, "mode_not_allowed_by_provider")
}

# ------------------------------------------------------------------ internal data

test_internal_source_minimised_and_provider_notified if {
	i := query(internal, request(["agent_id", "uai", "fte"]))
	d := decide(i)
	complete(d)
	d.status == "granted"
	d.mode == "minimised"
	d.parameters.columns == ["uai", "fte"]
	d.parameters.dropped == ["agent_id"]
	d.parameters.pseudonymised == []
	d.notify == ["region-bretagne"]
	d.reviewers == []
	startswith(d.reasons[0], "internal_source: ")
}

test_internal_source_raw_request_gets_minimised if {
	i := query(internal, asking(["uai", "fte"], "raw"))
	d := decide(i)
	d.status == "granted"
	d.mode == "minimised"
	has_reason(d, "more_closed_mode_offered")
}

test_internal_source_pseudonymised_on_request if {
	i := query(internal, asking(["agent_id", "fte"], "pseudonymised"))
	d := decide(i)
	d.status == "granted"
	d.mode == "pseudonymised"
	d.parameters.columns == ["agent_id", "fte"]
	d.parameters.pseudonymised == ["agent_id"]
}

# ------------------------------------------------------------------ personal data, eligible project

test_personal_pseudonymised_pending_provider_review if {
	i := query(pupils, request(["ine", "sex", "birth_date", "grade_maths"]))
	d := decide(i)
	complete(d)
	d.status == "pending_review"
	d.mode == "pseudonymised"
	d.parameters.columns == ["ine", "sex", "birth_date", "grade_maths"]
	d.parameters.pseudonymised == ["ine"]
	d.parameters.dropped == []
	d.parameters.generalised == []
	d.reviewers == [{"role": "provider", "organisation": "demo-rennes", "count": 1}]
	d.notify == []
	d.expiry == "2027-06-30"
	startswith(d.reasons[0], "personal_data_review: ")
}

test_personal_minimised_request_gets_pseudonymised if {
	i := query(pupils, asking(["ine", "sex"], "minimised"))
	d := decide(i)
	d.status == "pending_review"
	d.mode == "pseudonymised"
	has_reason(d, "more_closed_mode_offered")
}

test_personal_generalised_on_request if {
	i := query(pupils, asking(["ine", "birth_date", "sex", "commune", "absences_half_days"], "generalised"))
	d := decide(i)
	d.status == "pending_review"
	d.mode == "generalised"
	d.parameters.columns == ["birth_date", "sex", "commune", "absences_half_days"]
	d.parameters.generalised == ["birth_date", "commune", "absences_half_days"]
	d.parameters.dropped == ["ine"]
	d.parameters.pseudonymised == []
	d.parameters.k == 5
}

test_personal_aggregated_on_request_granted_at_once if {
	i := query(pupils, asking(["ine", "level", "grade_maths"], "aggregated"))
	d := decide(i)
	d.status == "granted"
	d.mode == "aggregated"
	d.parameters.columns == ["level", "grade_maths"]
	d.parameters.dropped == ["ine"]
	d.parameters.threshold == 10
	d.reviewers == []
	d.notify == ["demo-rennes"]
	has_reason(d, "summary_mode_granted")
}

test_personal_synthetic_on_request_granted_at_once if {
	i := query(pupils, asking(["sex", "grade_maths"], "synthetic"))
	d := decide(i)
	d.status == "granted"
	d.mode == "synthetic"
}

test_personal_walks_to_generalised_when_pseudonymised_not_allowed if {
	src := object.union(pupils, {"access_modes": ["generalised", "aggregated"]})
	i := query(src, request(["ine", "birth_date"]))
	d := decide(i)
	d.status == "pending_review"
	d.mode == "generalised"
	d.parameters.generalised == ["birth_date"]
	has_reason(d, "mode_not_allowed_by_provider")
}

test_personal_requested_mode_not_allowed_gets_next_closed if {
	src := object.union(pupils, {"access_modes": ["pseudonymised", "synthetic"]})
	i := query(src, asking(["sex", "level"], "generalised"))
	d := decide(i)
	d.status == "granted"
	d.mode == "synthetic"
	has_reason(d, "mode_not_allowed_by_provider")
}

test_personal_requested_closed_mode_not_allowed_nothing_closer if {
	src := object.union(pupils, {"access_modes": ["pseudonymised", "generalised"]})
	i := query(src, asking(["sex", "level"], "synthetic"))
	d := decide(i)
	d.status == "pending_review"
	d.mode == "generalised"
	has_reason(d, "mode_not_allowed_by_provider")
}

test_compatible_purpose_counts_as_allowed if {
	src := object.union(pupils, {"allowed_purposes": ["public_policy_evaluation"]})
	i := for_project(src, request(["ine", "sex"]), {"purpose": "statistics"})
	d := decide(i)
	d.status == "pending_review"
	d.mode == "pseudonymised"
	has_reason(d, "compatible_purpose")
	not has_reason(d, "purpose_not_allowed")
}

test_compatible_purpose_is_symmetric if {
	src := object.union(pupils, {"allowed_purposes": ["statistics"]})
	i := for_project(src, request(["ine", "sex"]), {"purpose": "public_policy_evaluation"})
	d := decide(i)
	d.mode == "pseudonymised"
}

# ------------------------------------------------------------------ raw personal data

raw_source := object.union(pupils, {"access_modes": ["raw", "pseudonymised", "aggregated"]})

test_personal_raw_with_justification_pending_review if {
	i := query(raw_source, object.union(asking(["ine", "sex"], "raw"), {"justification": justification}))
	d := decide(i)
	d.status == "pending_review"
	d.mode == "raw"
	d.parameters.columns == ["ine", "sex"]
	d.parameters.pseudonymised == []
	d.parameters.dropped == []
	d.reviewers == [{"role": "provider", "organisation": "demo-rennes", "count": 1}]
	startswith(d.reasons[0], "raw_access_review: ")
}

test_personal_raw_short_justification_gets_pseudonymised if {
	i := query(raw_source, object.union(asking(["ine", "sex"], "raw"), {"justification": "   thèse   "}))
	d := decide(i)
	d.status == "pending_review"
	d.mode == "pseudonymised"
	has_reason(d, "raw_needs_justification")
}

test_personal_raw_without_justification_gets_pseudonymised if {
	i := query(raw_source, asking(["ine", "sex"], "raw"))
	d := decide(i)
	d.mode == "pseudonymised"
	has_reason(d, "raw_needs_justification")
}

test_personal_raw_not_allowed_by_provider if {
	i := query(pupils, object.union(asking(["ine", "sex"], "raw"), {"justification": justification}))
	d := decide(i)
	d.status == "pending_review"
	d.mode == "pseudonymised"
	has_reason(d, "mode_not_allowed_by_provider")
	not has_reason(d, "raw_needs_justification")
}

test_personal_raw_needs_an_eligible_project if {
	i := for_project(raw_source, object.union(asking(["ine", "sex"], "raw"), {"justification": justification}), {"dpia_reference": null})
	d := decide(i)
	d.status == "granted"
	d.mode == "aggregated"
	has_reason(d, "more_closed_mode_offered")
	has_reason(d, "no_dpia")
}

# ------------------------------------------------------------------ personal data, project not eligible

test_personal_purpose_not_allowed_gets_aggregated if {
	i := for_project(pupils, request(["ine", "level", "grade_maths"]), {"purpose": "teaching"})
	d := decide(i)
	d.status == "granted"
	d.mode == "aggregated"
	d.parameters.columns == ["level", "grade_maths"]
	d.parameters.dropped == ["ine"]
	d.notify == ["demo-rennes"]
	has_reason(d, "purpose_not_allowed")
	has_reason(d, "summary_mode_granted")
}

test_personal_incompatible_purpose_gets_aggregated if {
	src := object.union(pupils, {"allowed_purposes": ["research"]})
	i := for_project(src, request(["level"]), {"purpose": "statistics"})
	d := decide(i)
	d.mode == "aggregated"
	has_reason(d, "purpose_not_allowed")
}

test_personal_no_legal_basis_gets_aggregated if {
	i := for_project(pupils, request(["level"]), {"legal_basis": null})
	d := decide(i)
	d.status == "granted"
	d.mode == "aggregated"
	has_reason(d, "no_legal_basis")
}

test_personal_blank_legal_basis_counts_as_none if {
	i := for_project(pupils, request(["level"]), {"legal_basis": "  "})
	d := decide(i)
	d.mode == "aggregated"
	has_reason(d, "no_legal_basis")
}

test_personal_no_dpia_gets_aggregated if {
	i := for_project(pupils, request(["level"]), {"dpia_reference": null})
	d := decide(i)
	d.status == "granted"
	d.mode == "aggregated"
	has_reason(d, "no_dpia")
}

test_personal_not_eligible_pseudonymised_request_gets_aggregated if {
	i := for_project(pupils, asking(["ine", "level"], "pseudonymised"), {"purpose": "teaching"})
	d := decide(i)
	d.status == "granted"
	d.mode == "aggregated"
	has_reason(d, "more_closed_mode_offered")
}

test_personal_not_eligible_synthetic_when_aggregated_not_allowed if {
	src := object.union(pupils, {"access_modes": ["pseudonymised", "synthetic"]})
	i := for_project(src, request(["level"]), {"purpose": "teaching"})
	d := decide(i)
	d.status == "granted"
	d.mode == "synthetic"
	has_reason(d, "mode_not_allowed_by_provider")
}

test_personal_not_eligible_denied_when_no_summary_mode_allowed if {
	src := object.union(pupils, {"access_modes": ["pseudonymised", "generalised"]})
	i := for_project(src, request(["level"]), {"purpose": "teaching"})
	d := decide(i)
	denied_for(d, "mode_not_allowed_by_provider")
	has_reason(d, "purpose_not_allowed")
}

test_personal_only_identifiers_in_a_dropping_mode_denied if {
	i := query(pupils, asking(["ine"], "aggregated"))
	d := decide(i)
	denied_for(d, "only_identifiers")
}

test_personal_only_identifiers_pseudonymised_is_fine if {
	i := query(pupils, request(["ine"]))
	d := decide(i)
	d.status == "pending_review"
	d.parameters.columns == ["ine"]
}

# ------------------------------------------------------------------ sensitive data

test_sensitive_summary_only_granted if {
	i := query(health, request(["ine", "uai", "pai"]))
	d := decide(i)
	complete(d)
	d.status == "granted"
	d.mode == "aggregated"
	d.parameters.columns == ["uai", "pai"]
	d.parameters.dropped == ["ine"]
	d.notify == ["demo-rennes"]
	has_reason(d, "sensitive_data")
	has_reason(d, "summary_mode_granted")
}

test_sensitive_pseudonymised_request_gets_aggregated if {
	i := query(health, asking(["ine", "pai"], "pseudonymised"))
	d := decide(i)
	d.status == "granted"
	d.mode == "aggregated"
	has_reason(d, "more_closed_mode_offered")
}

test_sensitive_opened_by_provider_needs_two_reviewers if {
	i := query(health_open, request(["ine", "uai", "pai"]))
	d := decide(i)
	d.status == "pending_review"
	d.mode == "pseudonymised"
	d.parameters.pseudonymised == ["ine"]
	d.reviewers == [{"role": "provider", "organisation": "demo-rennes", "count": 2}]
	has_reason(d, "sensitive_data")
	has_reason(d, "personal_data_review")
}

test_sensitive_opened_generalised_only if {
	src := object.union(health, {"access_modes": ["generalised", "aggregated"]})
	i := query(src, request(["ine", "uai", "pai"]))
	d := decide(i)
	d.status == "pending_review"
	d.mode == "generalised"
	d.reviewers[0].count == 2
}

test_sensitive_opened_but_project_not_eligible if {
	i := for_project(health_open, request(["uai", "pai"]), {"purpose": "statistics"})
	d := decide(i)
	d.status == "granted"
	d.mode == "aggregated"
	has_reason(d, "purpose_not_allowed")
	has_reason(d, "sensitive_data")
}

test_sensitive_raw_with_justification_two_reviewers if {
	src := object.union(health, {"access_modes": ["raw", "pseudonymised", "aggregated"]})
	i := query(src, object.union(asking(["ine", "pai"], "raw"), {"justification": justification}))
	d := decide(i)
	d.status == "pending_review"
	d.mode == "raw"
	d.reviewers[0].count == 2
}

test_sensitive_synthetic_only if {
	src := object.union(health, {"access_modes": ["synthetic"]})
	i := query(src, request(["pai"]))
	d := decide(i)
	d.status == "granted"
	d.mode == "synthetic"
}

test_sensitive_denied_when_only_row_level_allowed_and_not_eligible if {
	src := object.union(health, {"access_modes": ["pseudonymised"]})
	i := for_project(src, request(["pai"]), {"purpose": "statistics"})
	d := decide(i)
	denied_for(d, "mode_not_allowed_by_provider")
	has_reason(d, "sensitive_data")
}

# ------------------------------------------------------------------ expiry

test_expiry_project_end_first if {
	i := query(pupils, request(["sex"]))
	d := decide(i)
	d.expiry == "2027-06-30"
	has_reason(d, "expiry")
}

test_expiry_retention_days if {
	i := query(object.union(pupils, {"retention": "P30D"}), request(["sex"]))
	d := decide(i)
	d.expiry == "2026-12-22"
}

test_expiry_retention_weeks if {
	i := query(object.union(pupils, {"retention": "P6W"}), request(["sex"]))
	d := decide(i)
	d.expiry == "2027-01-03"
}

test_expiry_retention_months if {
	i := query(object.union(pupils, {"retention": "P2M"}), request(["sex"]))
	d := decide(i)
	d.expiry == "2027-01-22"
}

test_expiry_retention_years_and_months if {
	i := for_project(object.union(pupils, {"retention": "P1Y6M"}), request(["sex"]), {"end_date": "2030-01-01"})
	d := access.decide(i, json.patch(reference, [{"op": "replace", "path": "/limits/grant_max_days", "value": 1000}]))
	d.expiry == "2028-05-22"
}

test_expiry_policy_maximum if {
	i := for_project(ips, request(["IPS"]), {"end_date": "2030-01-01"})
	d := decide(i)
	d.expiry == "2027-11-22"
	has_reason(d, "expiry")
}

test_expiry_on_the_last_day_of_the_project if {
	i := object.union(query(ips, request(["IPS"])), {"now": "2027-06-30"})
	d := decide(i)
	d.status == "granted"
	d.expiry == "2027-06-30"
}

test_project_ended_denied if {
	i := object.union(query(ips, request(["IPS"])), {"now": "2027-07-01"})
	d := decide(i)
	denied_for(d, "project_ended")
}

# ------------------------------------------------------------------ bad requests

test_unknown_column_denied if {
	i := query(pupils, request(["ine", "nom"]))
	d := decide(i)
	denied_for(d, "unknown_column")
}

test_duplicate_column_denied if {
	i := query(pupils, request(["sex", "sex"]))
	d := decide(i)
	denied_for(d, "duplicate_column")
}

test_empty_column_list_denied if {
	i := query(pupils, request([]))
	d := decide(i)
	denied_for(d, "no_columns")
}

test_unknown_mode_denied if {
	i := query(ips, asking(["IPS"], "anonymised"))
	d := decide(i)
	denied_for(d, "unknown_mode")
}

test_requester_not_a_member_denied if {
	i := query(ips, object.union(request(["IPS"]), {"requester": "mallory"}))
	d := decide(i)
	denied_for(d, "not_a_member")
}

test_unknown_purpose_denied if {
	i := for_project(ips, request(["IPS"]), {"purpose": "marketing"})
	d := decide(i)
	denied_for(d, "unknown_purpose")
}

# ------------------------------------------------------------------ garbage in, a decision out

test_empty_input_denied if {
	d := decide({})
	denied_for(d, "invalid_source")
	has_reason(d, "invalid_input")
	has_reason(d, "invalid_project")
	has_reason(d, "invalid_request")
}

test_non_object_input_denied if {
	d := decide(["not", "an", "object"])
	denied_for(d, "invalid_source")
}

test_source_without_schema_denied if {
	i := query(object.remove(pupils, ["schema"]), request(["sex"]))
	d := decide(i)
	denied_for(d, "invalid_source")
}

test_source_with_duplicate_column_names_denied if {
	src := object.union(ips, {"schema": [{"name": "IPS", "type": "float64"}, {"name": "IPS", "type": "string"}]})
	i := query(src, request(["IPS"]))
	d := decide(i)
	denied_for(d, "invalid_source")
}

test_source_with_unknown_sensitivity_denied if {
	i := query(object.union(pupils, {"sensitivity": "secret"}), request(["sex"]))
	d := decide(i)
	denied_for(d, "invalid_source")
}

test_source_with_unknown_access_mode_denied if {
	i := query(object.union(pupils, {"access_modes": ["aggregated", "anonymised"]}), request(["sex"]))
	d := decide(i)
	denied_for(d, "invalid_source")
}

test_source_with_bad_retention_denied if {
	i := query(object.union(pupils, {"retention": "5 years"}), request(["sex"]))
	d := decide(i)
	denied_for(d, "invalid_source")
}

test_bad_now_denied if {
	i := object.union(query(ips, request(["IPS"])), {"now": "22/11/2026"})
	d := decide(i)
	denied_for(d, "invalid_input")
}

test_impossible_date_denied if {
	i := for_project(ips, request(["IPS"]), {"end_date": "2027-02-30"})
	d := decide(i)
	denied_for(d, "invalid_project")
}

test_columns_not_names_denied if {
	i := query(ips, request([1, 2]))
	d := decide(i)
	denied_for(d, "invalid_request")
}

test_missing_reference_data_denied if {
	i := query(ips, request(["IPS"]))
	d := access.decide(i, {})
	denied_for(d, "reference_data_missing")
}

# ------------------------------------------------------------------ helpers of the policy

test_duration_forms if {
	access.duration("P5Y") == [5, 0, 0]
	access.duration("P18M") == [0, 18, 0]
	access.duration("P30D") == [0, 0, 30]
	access.duration("P6W") == [0, 0, 42]
	access.duration("P1Y6M") == [1, 6, 0]
}

test_duration_rejects_non_durations if {
	not access.duration("P")
	not access.duration("5Y")
	not access.duration("P1W2D")
	not access.duration("PT5H")
}
