package rollgate.builtin.production_analysis_test

import rego.v1

import data.rollgate.builtin.production_analysis

plan(labels, steps) := {
	"plan": {"metadata": {"name": "checkout", "labels": labels}},
	"steps": steps,
}

test_production_with_analysis_is_allowed if {
	count(production_analysis.deny) == 0 with input as plan(
		{"environment": "production"},
		[{"setWeight": 5}, {"analysis": {"checks": ["success-rate"], "duration": "5m"}}, {"setWeight": 100}],
	)
}

test_production_without_analysis_is_denied if {
	production_analysis.deny == {`plan "checkout": production plans need at least one analysis step with a check`} with input as plan(
		{"environment": "production"},
		[{"setWeight": 5}, {"pause": {"duration": "10m"}}, {"setWeight": 100}],
	)
}

test_production_with_empty_analysis_is_denied if {
	count(production_analysis.deny) == 1 with input as plan(
		{"environment": "production"},
		[{"setWeight": 5}, {"analysis": {"checks": []}}, {"setWeight": 100}],
	)
}

test_staging_without_analysis_is_allowed if {
	count(production_analysis.deny) == 0 with input as plan({"environment": "staging"}, [{"setWeight": 100}])
}
