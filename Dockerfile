# keywatch on Node 24. The embedded engine needs glibc (chdb ships a linux-x64-gnu build).
FROM node:24-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm install --no-save tsx@4
COPY bin bin
COPY cli cli
COPY config config
COPY contract contract
COPY clickhouse clickhouse
COPY ingest ingest
COPY api api
ENV HOST=0.0.0.0 PORT=8080 KEYWATCH_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["node", "bin/keywatch.js"]
CMD ["start"]
