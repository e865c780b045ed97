#!/usr/bin/env bash
# Prepare the docker compose stack on this machine, once:
#   - the sFTP keys in deploy/secrets/ (host key of the sftp service, client key of Airflow),
#     generated if missing;
#   - .env from deploy/env.example, every CHANGE_ME replaced by a generated secret,
#     AIRFLOW_UID set to your uid on Linux, SFTP_HOST_PUBLIC_KEY from the host key.
# Never overwrites: an existing key or an already filled value is kept, so it is safe to
# run again (e.g. after deploy/env.example gained a setting: only that one is added).
#
# Usage: deploy/init-env.sh            (from anywhere; needs openssl and ssh-keygen)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env_file="${root}/.env"
example="${root}/deploy/env.example"
secrets="${root}/deploy/secrets"

for tool in openssl ssh-keygen; do
    command -v "${tool}" > /dev/null || { echo "deploy/init-env.sh needs ${tool}" >&2; exit 1; }
done

# --- keys --------------------------------------------------------------------------------
mkdir -p "${secrets}"
for key in sftp_host_ed25519_key sftp_client_ed25519; do
    if [[ ! -f "${secrets}/${key}" ]]; then
        ssh-keygen -q -t ed25519 -N '' -C "clv-${key}" -f "${secrets}/${key}"
        echo "created deploy/secrets/${key} (+ .pub)"
    fi
done

# --- .env --------------------------------------------------------------------------------
umask 077
[[ -f "${env_file}" ]] || { cp "${example}" "${env_file}"; echo "created .env from deploy/env.example"; }

# Settings of env.example that .env lacks are appended (with their example value).
while IFS= read -r line; do
    name="${line%%=*}"
    grep -q "^${name}=" "${env_file}" || { echo "${line}" >> "${env_file}"; echo "added ${name} to .env"; }
done < <(grep -E '^[A-Z_][A-Z0-9_]*=' "${example}")

set_value() {  # set_value NAME VALUE: replace the line NAME=... of .env
    local tmp
    tmp="$(mktemp "${env_file}.XXXXXX")"
    awk -v name="$1" -v value="$2" 'index($0, name "=") == 1 { print name "=" value; next } { print }' \
        "${env_file}" > "${tmp}"
    mv "${tmp}" "${env_file}"
}

value_of() { grep -E "^$1=" "${env_file}" | head -n 1 | cut -d= -f2- | tr -d '"'; }

names="$(grep -E '^[A-Z_][A-Z0-9_]*=' "${env_file}" | cut -d= -f1)"
while IFS= read -r name; do
    [[ "$(value_of "${name}")" == "CHANGE_ME" ]] || continue
    case "${name}" in
        AIRFLOW_FERNET_KEY) value="$(openssl rand -base64 32 | tr '+/' '-_')" ;;
        SFTP_HOST_PUBLIC_KEY) value="\"$(cut -d' ' -f1,2 "${secrets}/sftp_host_ed25519_key.pub")\"" ;;
        *) value="$(openssl rand -hex 24)" ;;
    esac
    set_value "${name}" "${value}"
    echo "generated ${name}"
done <<< "${names}"

# On Linux the workers must read the client key (mode 600): they run as your uid, or, when
# you are root, as 50000, to which the key is then given.
if [[ "$(uname -s)" == "Linux" && "$(value_of AIRFLOW_UID)" == "50000" ]]; then
    if [[ "$(id -u)" == "0" ]]; then
        chown 50000:0 "${secrets}/sftp_client_ed25519"
    else
        set_value AIRFLOW_UID "$(id -u)"
        echo "AIRFLOW_UID=$(id -u)"
    fi
fi

echo "ready: docker compose up -d --build   (UI: http://localhost:$(value_of AIRFLOW_API_PORT), user admin, password AIRFLOW_ADMIN_PASSWORD in .env)"
