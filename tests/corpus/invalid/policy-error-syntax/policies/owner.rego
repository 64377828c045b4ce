# Case policy-error-syntax: a repository policy that does not parse (`deny` has no body
# braces closed).
package rollgate.corpus.owner

import rego.v1

deny contains msg if {
	not input.plan.metadata.labels.team
	msg := "the plan has no team label"
