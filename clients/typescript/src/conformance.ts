/**
 * An openapi-fetch middleware that holds every answer to the served OpenAPI document: the status
 * must be documented for the operation, every header the document marks required must be there,
 * and the body must match the documented media type and JSON Schema (OpenAPI 3.1 is JSON Schema
 * 2020-12: Ajv with its formats, so `uuid` and `date-time` are checked too). The types catch a
 * client that misuses the document; this catches a server that answers something else.
 */
import type { Middleware } from "openapi-fetch";
import { Ajv2020 } from "ajv/dist/2020.js";
import addFormatsModule from "ajv-formats";

// ajv-formats is CommonJS: its default export is the function itself, or under `default`.
const addFormats = ((addFormatsModule as unknown as { default?: unknown }).default ?? addFormatsModule) as (
  ajv: Ajv2020,
) => Ajv2020;

interface Header {
  required?: boolean;
  $ref?: string;
}
interface MediaTypeObject {
  schema?: unknown;
}
interface ResponseObject {
  headers?: Record<string, Header>;
  content?: Record<string, MediaTypeObject>;
}
interface Operation {
  operationId?: string;
  responses: Record<string, ResponseObject>;
}
export interface OpenAPIDocument {
  openapi: string;
  paths: Record<string, Record<string, Operation>>;
  components?: { headers?: Record<string, Header> };
}

/** An answer the document does not describe. */
export class Mismatch extends Error {
  override name = "Mismatch";
}

/** A header object, or the one a `#/components/headers/...` reference names. */
function resolveHeader(document: OpenAPIDocument, header: Header): Header {
  if (header.$ref === undefined) return header;
  const name = header.$ref.replace("#/components/headers/", "");
  const found = document.components?.headers?.[name];
  if (found === undefined) throw new Mismatch(`unresolvable header reference ${header.$ref}`);
  return found;
}

/** Fetches the document the server serves. */
export async function fetchDocument(baseUrl: string): Promise<OpenAPIDocument> {
  const response = await fetch(`${baseUrl}/schema/openapi.json`);
  if (!response.ok) throw new Error(`GET /schema/openapi.json: ${response.status}`);
  return (await response.json()) as OpenAPIDocument;
}

/** The middleware, and the count of answers it checked (a run that checked none proves nothing). */
export function conformance(document: OpenAPIDocument): { middleware: Middleware; checked: () => number } {
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats(ajv);
  ajv.addSchema(document as object, "openapi.json");
  let checked = 0;

  const middleware: Middleware = {
    async onResponse({ request, response, schemaPath }) {
      const method = request.method.toLowerCase();
      const operation = document.paths[schemaPath]?.[method];
      if (operation === undefined) throw new Mismatch(`${request.method} ${schemaPath} is not in the document`);
      const name = `${operation.operationId ?? `${request.method} ${schemaPath}`} -> ${response.status}`;
      const documented = operation.responses[String(response.status)];
      if (documented === undefined) throw new Mismatch(`${name}: status not documented`);
      for (const [header, declared] of Object.entries(documented.headers ?? {})) {
        const spec = resolveHeader(document, declared);
        if (spec.required && !response.headers.has(header)) throw new Mismatch(`${name}: no ${header} header`);
      }
      const text = await response.clone().text();
      if (documented.content === undefined) {
        if (text !== "") throw new Mismatch(`${name}: a body where the document says none`);
      } else {
        const mediaType = (response.headers.get("content-type") ?? "").split(";")[0]!.trim();
        const media = documented.content[mediaType];
        if (media === undefined) throw new Mismatch(`${name}: media type ${mediaType} not documented`);
        if (media.schema !== undefined) {
          const pointer = ["paths", schemaPath, method, "responses", String(response.status), "content", mediaType, "schema"]
            .map((part) => part.replaceAll("~", "~0").replaceAll("/", "~1"))
            .join("/");
          const validate = ajv.getSchema(`openapi.json#/${pointer}`);
          if (validate === undefined) throw new Mismatch(`${name}: schema not found at ${pointer}`);
          if (!validate(JSON.parse(text))) {
            throw new Mismatch(`${name}: body does not match the document: ${ajv.errorsText(validate.errors)}\n${text}`);
          }
        }
      }
      checked += 1;
      return response;
    },
  };
  return { middleware, checked: () => checked };
}
