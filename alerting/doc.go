// Package alerting will hold rule evaluation, alert de-duplication across
// nodes and notifications.
package alerting
