// A JSON parser for pgfn handlers: the event is parsed once into a tree of
// Json values, so a field that is absent or null reads as null wherever it is,
// and a key is found only in the object it belongs to. Small on purpose: it
// needs no compiler transform and adds a few kilobytes to a module.

/** What a Json value holds. */
export enum JsonKind {
  Null,
  Bool,
  Number,
  String,
  Array,
  Object,
}

/** One parsed JSON value: `Json.parse(text)`, or `event()` for the event. */
export class Json {
  private constructor(
    readonly kind: JsonKind,
    // A string's value, or a number's text as written (so 42 stays "42").
    private text: string = "",
    private flag: bool = false,
    // An array's items, or an object's values in the order written.
    private items: Json[] = [],
    private names: string[] = [],
  ) {}

  /** Parses JSON text; invalid text throws, failing the run with the position. */
  static parse(text: string): Json {
    const parser = new Parser(text);
    const value = parser.value();
    parser.end();
    return value;
  }

  isNull(): bool {
    return this.kind == JsonKind.Null;
  }

  /**
   * The member `key` of an object, or null when this is not an object or has
   * no such member. A member whose value is JSON null is a Json of kind Null:
   * use the typed getters (getString, getObject, ...) to treat both as null.
   */
  get(key: string): Json | null {
    if (this.kind != JsonKind.Object) return null;
    // The last of duplicate keys wins, as in JavaScript's JSON.parse.
    for (let i = this.names.length - 1; i >= 0; i--) {
      if (this.names[i] == key) return this.items[i];
    }
    return null;
  }

  /** True when an object has the member `key` (even if its value is null). */
  has(key: string): bool {
    return this.get(key) !== null;
  }

  /** The item at `index` of an array, or null when out of range or not an array. */
  at(index: i32): Json | null {
    if (this.kind != JsonKind.Array || index < 0 || index >= this.items.length) return null;
    return this.items[index];
  }

  /** Items of an array, members of an object, else 0. */
  get length(): i32 {
    return this.kind == JsonKind.Array || this.kind == JsonKind.Object ? this.items.length : 0;
  }

  /** An object's keys in the order written (empty for anything else). */
  keys(): string[] {
    return this.kind == JsonKind.Object ? this.names.slice(0) : [];
  }

  /** The string, or null when this is not a string. */
  asString(): string | null {
    return this.kind == JsonKind.String ? this.text : null;
  }

  /** The number, or `otherwise` when this is not a number. */
  asNumber(otherwise: f64 = NaN): f64 {
    return this.kind == JsonKind.Number ? parseFloat(this.text) : otherwise;
  }

  /** The boolean, or `otherwise` when this is not true or false. */
  asBool(otherwise: bool = false): bool {
    return this.kind == JsonKind.Bool ? this.flag : otherwise;
  }

  /** The member `key` when it is an object; null when absent, null or anything else. */
  getObject(key: string): Json | null {
    const value = this.get(key);
    return value !== null && value.kind == JsonKind.Object ? value : null;
  }

  /** The member `key` when it is an array; null when absent, null or anything else. */
  getArray(key: string): Json | null {
    const value = this.get(key);
    return value !== null && value.kind == JsonKind.Array ? value : null;
  }

  /** The member `key` when it is a string; null when absent, null or anything else. */
  getString(key: string): string | null {
    const value = this.get(key);
    return value !== null ? value.asString() : null;
  }

  /** The member `key` when it is a number, else `otherwise` (NaN unless given). */
  getNumber(key: string, otherwise: f64 = NaN): f64 {
    const value = this.get(key);
    return value !== null ? value.asNumber(otherwise) : otherwise;
  }

  /** The member `key` when it is true or false, else `otherwise`. */
  getBool(key: string, otherwise: bool = false): bool {
    const value = this.get(key);
    return value !== null ? value.asBool(otherwise) : otherwise;
  }

  /** The value as JSON text; numbers as they were written. */
  toString(): string {
    switch (this.kind) {
      case JsonKind.Null:
        return "null";
      case JsonKind.Bool:
        return this.flag ? "true" : "false";
      case JsonKind.Number:
        return this.text;
      case JsonKind.String:
        return quote(this.text);
      case JsonKind.Array: {
        const parts = new Array<string>(this.items.length);
        for (let i = 0; i < this.items.length; i++) parts[i] = this.items[i].toString();
        return "[" + parts.join(",") + "]";
      }
      default: {
        const parts = new Array<string>(this.items.length);
        for (let i = 0; i < this.items.length; i++) {
          parts[i] = quote(this.names[i]) + ":" + this.items[i].toString();
        }
        return "{" + parts.join(",") + "}";
      }
    }
  }

  static makeNull(): Json {
    return new Json(JsonKind.Null);
  }

  static makeBool(value: bool): Json {
    return new Json(JsonKind.Bool, "", value);
  }

  static makeNumber(text: string): Json {
    return new Json(JsonKind.Number, text);
  }

  static makeString(value: string): Json {
    return new Json(JsonKind.String, value);
  }

  static makeArray(items: Json[]): Json {
    return new Json(JsonKind.Array, "", false, items);
  }

  static makeObject(names: string[], values: Json[]): Json {
    return new Json(JsonKind.Object, "", false, values, names);
  }
}

/** `s` as a JSON string literal, quotes included. */
export function quote(s: string): string {
  let out = '"';
  let from = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    let escaped: string | null = null;
    if (c == 0x22) escaped = '\\"';
    else if (c == 0x5c) escaped = "\\\\";
    else if (c == 0x0a) escaped = "\\n";
    else if (c == 0x0d) escaped = "\\r";
    else if (c == 0x09) escaped = "\\t";
    else if (c < 0x20) escaped = "\\u00" + (c < 0x10 ? "0" : "") + c.toString(16);
    if (escaped !== null) {
      out += s.substring(from, i) + escaped;
      from = i + 1;
    }
  }
  return out + s.substring(from) + '"';
}

class Parser {
  private at: i32 = 0;

  constructor(private text: string) {}

  value(): Json {
    this.space();
    if (this.at >= this.text.length) this.fail("a value");
    const c = this.text.charCodeAt(this.at);
    if (c == 0x7b) return this.object();
    if (c == 0x5b) return this.array();
    if (c == 0x22) return Json.makeString(this.string());
    if (c == 0x2d || (c >= 0x30 && c <= 0x39)) return this.number();
    if (this.word("true")) return Json.makeBool(true);
    if (this.word("false")) return Json.makeBool(false);
    if (this.word("null")) return Json.makeNull();
    this.fail("a value");
    return unreachable();
  }

  end(): void {
    this.space();
    if (this.at < this.text.length) this.fail("the end of the text");
  }

  private object(): Json {
    this.at++; // {
    const names = new Array<string>();
    const values = new Array<Json>();
    this.space();
    if (this.peek() == 0x7d) {
      this.at++;
      return Json.makeObject(names, values);
    }
    while (true) {
      this.space();
      if (this.peek() != 0x22) this.fail("a key");
      names.push(this.string());
      this.space();
      this.expect(0x3a, "':'");
      values.push(this.value());
      this.space();
      const c = this.peek();
      this.at++;
      if (c == 0x7d) return Json.makeObject(names, values);
      if (c != 0x2c) {
        this.at--;
        this.fail("',' or '}'");
      }
    }
  }

  private array(): Json {
    this.at++; // [
    const items = new Array<Json>();
    this.space();
    if (this.peek() == 0x5d) {
      this.at++;
      return Json.makeArray(items);
    }
    while (true) {
      items.push(this.value());
      this.space();
      const c = this.peek();
      this.at++;
      if (c == 0x5d) return Json.makeArray(items);
      if (c != 0x2c) {
        this.at--;
        this.fail("',' or ']'");
      }
    }
  }

  private string(): string {
    this.at++; // "
    let out = "";
    let from = this.at;
    while (true) {
      if (this.at >= this.text.length) this.fail("the end of a string");
      const c = this.text.charCodeAt(this.at);
      if (c == 0x22) {
        out += this.text.substring(from, this.at);
        this.at++;
        return out;
      }
      if (c < 0x20) this.fail("no control character in a string");
      if (c != 0x5c) {
        this.at++;
        continue;
      }
      out += this.text.substring(from, this.at);
      this.at++;
      const e = this.peek();
      this.at++;
      if (e == 0x22) out += '"';
      else if (e == 0x5c) out += "\\";
      else if (e == 0x2f) out += "/";
      else if (e == 0x62) out += "\b";
      else if (e == 0x66) out += "\f";
      else if (e == 0x6e) out += "\n";
      else if (e == 0x72) out += "\r";
      else if (e == 0x74) out += "\t";
      else if (e == 0x75) {
        let code = 0;
        for (let k = 0; k < 4; k++) {
          const h = this.peek();
          this.at++;
          let digit = -1;
          if (h >= 0x30 && h <= 0x39) digit = h - 0x30;
          else if (h >= 0x61 && h <= 0x66) digit = h - 0x61 + 10;
          else if (h >= 0x41 && h <= 0x46) digit = h - 0x41 + 10;
          if (digit < 0) {
            this.at--;
            this.fail("four hex digits after \\u");
          }
          code = (code << 4) | digit;
        }
        out += String.fromCharCode(code);
      } else {
        this.at--;
        this.fail("an escape");
      }
      from = this.at;
    }
  }

  private number(): Json {
    const start = this.at;
    if (this.peek() == 0x2d) this.at++;
    if (this.peek() == 0x30) this.at++;
    else if (!this.digits()) this.fail("a digit");
    if (this.peek() == 0x2e) {
      this.at++;
      if (!this.digits()) this.fail("a digit");
    }
    const e = this.peek();
    if (e == 0x65 || e == 0x45) {
      this.at++;
      const sign = this.peek();
      if (sign == 0x2b || sign == 0x2d) this.at++;
      if (!this.digits()) this.fail("a digit");
    }
    return Json.makeNumber(this.text.substring(start, this.at));
  }

  private digits(): bool {
    const start = this.at;
    while (this.peek() >= 0x30 && this.peek() <= 0x39) this.at++;
    return this.at > start;
  }

  private word(w: string): bool {
    if (this.text.substr(this.at, w.length) != w) return false;
    this.at += w.length;
    return true;
  }

  private space(): void {
    while (this.at < this.text.length) {
      const c = this.text.charCodeAt(this.at);
      if (c != 0x20 && c != 0x0a && c != 0x0d && c != 0x09) return;
      this.at++;
    }
  }

  private peek(): i32 {
    return this.at < this.text.length ? this.text.charCodeAt(this.at) : -1;
  }

  private expect(c: i32, what: string): void {
    if (this.peek() != c) this.fail(what);
    this.at++;
  }

  private fail(what: string): void {
    throw new Error("invalid JSON: expected " + what + " at character " + this.at.toString());
  }
}
