"""The deployments users run, run for real: `make test-deploy`.

`ansible-playbook site.yml` converges on four systemd hosts (podman containers on a private
bridge network), and `make up` builds and starts the Compose stack under a private dockerd.
Third-party images that cannot be pulled here are replaced by stand-ins built from Debian's
packages and what `make install` made: Kafka's jars, CouchDB built from source (see `standins.py`).
"""
