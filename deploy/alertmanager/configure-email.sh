#!/bin/sh
# Print alertmanager.yml with your mail settings in place of its placeholders.
#
#   SMTP_SMARTHOST=smtp.example.org:587 ALERT_EMAIL_FROM=peerstore@example.org \
#   ALERT_EMAIL_TO=you@example.org SMTP_USERNAME=peerstore@example.org \
#   SMTP_PASSWORD_FILE=/etc/prometheus/smtp-password \
#       deploy/alertmanager/configure-email.sh > /etc/prometheus/alertmanager.yml
#
# Required: SMTP_SMARTHOST (host:port), ALERT_EMAIL_FROM, ALERT_EMAIL_TO (comma-separated
# for several people). Optional: SMTP_USERNAME (empty: the server takes mail without a
# login), SMTP_PASSWORD_FILE (a file holding the password on one line, readable by
# Alertmanager; default /etc/prometheus/smtp-password), SMTP_REQUIRE_TLS (true|false,
# default true: STARTTLS before sending). Reads deploy/alertmanager/alertmanager.yml, or the
# file given as the only argument. Check the result with `amtool check-config`.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
source_file=${1:-$here/alertmanager.yml}

need() {
    eval "value=\${$1:-}"
    if [ -z "$value" ]; then
        echo "configure-email.sh: set $1 ($2); see the top of this script" >&2
        exit 2
    fi
}
need SMTP_SMARTHOST "the SMTP server as host:port, e.g. smtp.gmail.com:587"
need ALERT_EMAIL_FROM "the sender address"
need ALERT_EMAIL_TO "who gets the alerts"
case "$SMTP_SMARTHOST" in
    *:[0-9]*) ;;
    *) echo "configure-email.sh: SMTP_SMARTHOST must be host:port (e.g. smtp.example.org:587), got '$SMTP_SMARTHOST'" >&2
       exit 2 ;;
esac
tls=${SMTP_REQUIRE_TLS:-true}
case "$tls" in
    true|false) ;;
    *) echo "configure-email.sh: SMTP_REQUIRE_TLS must be true or false, got '$tls'" >&2; exit 2 ;;
esac
[ -r "$source_file" ] || { echo "configure-email.sh: cannot read $source_file" >&2; exit 2; }

# A value as a single-quoted YAML scalar, escaped for the right-hand side of sed's s|||.
quoted() {
    printf "'%s'" "$(printf '%s' "$1" | sed "s/'/''/g")" | sed 's/[\\&|]/\\&/g'
}

username=${SMTP_USERNAME:-}
if [ -n "$username" ]; then
    auth="s|^\\(  smtp_auth_username: \\)peerstore-alerts@example.com|\\1$(quoted "$username")|
s|^\\(  smtp_auth_password_file: \\)/etc/prometheus/smtp-password|\\1$(quoted "${SMTP_PASSWORD_FILE:-/etc/prometheus/smtp-password}")|"
else
    auth="/^  smtp_auth_username: /d
/^  smtp_auth_password_file: /d"
fi

sed -e "s|^\\(  smtp_smarthost: \\)smtp.example.com:587|\\1$(quoted "$SMTP_SMARTHOST")|" \
    -e "s|^\\(  smtp_from: \\)peerstore-alerts@example.com|\\1$(quoted "$ALERT_EMAIL_FROM")|" \
    -e "s|^\\(  smtp_require_tls: \\)true|\\1$tls|" \
    -e "s|^\\(      - to: \\)you@example.com|\\1$(quoted "$ALERT_EMAIL_TO")|" \
    -e "$auth" \
    "$source_file"
