// Prints configFromEnv() of this process as JSON: run with narrow --allow-env.
import { configFromEnv } from "../../config.ts";

console.log(JSON.stringify(configFromEnv()));
