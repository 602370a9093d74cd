# shellcheck shell=bash
# The health probe's options, checked in one place: scripts/health-check.sh
# takes them, and scripts/deploy.sh passes them on to it, so deploy.sh must
# refuse exactly what health-check.sh would (a value refused there exits 64,
# which deploy.sh would read as "unhealthy" and roll back). Sourced, not run;
# the caller defines `die_usage MESSAGE` (prints it and exits 64).
#
#   probe_check_options RETRIES INTERVAL TIMEOUT

probe_check_options() {
  local retries=$1 interval=$2 timeout=$3
  [[ $retries =~ ^[1-9][0-9]*$ ]] || die_usage "--retries must be a whole number >= 1: $retries"
  [[ $interval =~ ^[0-9]+(\.[0-9]+)?$ ]] || die_usage "--interval must be a number of seconds: $interval"
  [[ $timeout =~ ^[0-9]+(\.[0-9]+)?$ && ! $timeout =~ ^0+(\.0+)?$ ]] \
    || die_usage "--timeout must be a positive number of seconds: $timeout"
}
