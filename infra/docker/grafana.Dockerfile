# syntax=docker/dockerfile:1
# LineSight's Grafana: the published Grafana image with the ClickHouse datasource plugin baked in at a
# pinned version, so the container downloads nothing when it starts (air-gapped plants; the former
# GF_INSTALL_PLUGINS fetched the plugin from grafana.com at every start). Build context: repository
# root; compose builds it (service `grafana`):
#
#   docker compose build grafana
#
# The plugin is fetched here, at build time only: from grafana.com, or from a plant mirror with
# CLICKHOUSE_PLUGIN_URL (the plugin's zip, e.g. the release asset of grafana/clickhouse-datasource).
# At start Grafana verifies the plugin's signature (MANIFEST.txt) with the key built into Grafana
# (GF_PLUGINS_PUBLIC_KEY_RETRIEVAL_DISABLED=true in compose): a modified plugin is not loaded.

# The base; pin it by digest like the others (docs/deployment.md, "Base images"): GRAFANA_IMAGE in .env.
ARG GRAFANA_IMAGE=grafana/grafana:11.6.1
FROM ${GRAFANA_IMAGE}
ARG CLICKHOUSE_PLUGIN_VERSION=4.10.1
ARG CLICKHOUSE_PLUGIN_URL=

USER root
# Outside /var/lib/grafana (the grafana-data volume, which would hide what the image holds there once
# the volume exists): owned by root and read-only for Grafana's uid 472, so a rebuild with another
# version replaces the plugin on the next `up`, and nothing at run time can change it.
RUN set -eu; \
    dir=/opt/linesight/grafana-plugins; \
    install -d -m 0755 "$dir"; \
    if [ -n "$CLICKHOUSE_PLUGIN_URL" ]; then \
        grafana cli --pluginsDir "$dir" --pluginUrl "$CLICKHOUSE_PLUGIN_URL" plugins install grafana-clickhouse-datasource; \
    else \
        grafana cli --pluginsDir "$dir" plugins install grafana-clickhouse-datasource "$CLICKHOUSE_PLUGIN_VERSION"; \
    fi; \
    grep -q "\"$CLICKHOUSE_PLUGIN_VERSION\"" "$dir/grafana-clickhouse-datasource/plugin.json" \
        || { echo "grafana-clickhouse-datasource is not version $CLICKHOUSE_PLUGIN_VERSION" >&2; exit 1; }; \
    chown -R root:root "$dir"; \
    chmod -R a+rX,go-w "$dir"
ENV GF_PATHS_PLUGINS=/opt/linesight/grafana-plugins
LABEL org.opencontainers.image.title="linesight-grafana" \
      org.opencontainers.image.description="Grafana with the ClickHouse datasource plugin for LineSight's analysts' dashboards"
USER 472
