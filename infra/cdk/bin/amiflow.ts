// The CDK app: one AmiflowStack, configured by context (cdk.json, or `-c key=value`):
//
//   stackName                 amiflow
//   architecture              x86_64 | arm64 (x86_64)
//   bootstrapDir              the directory holding `bootstrap` built for that architecture
//                             (infra/build/lambda/<architecture>, where
//                             `infra/lambda/build-bootstrap.sh <architecture> infra/build/lambda/<architecture>` puts it)
//   instanceProfileRoleNames  comma-separated role names
//   defaultVpcId, defaultSubnetId, buildHostInstanceId, alarmEmail
//   janitorRegions            comma-separated regions
//   tracing                   true | false
//   executionTimeoutSeconds   (21600)
//   logRetentionDays          (30)
//   scheduleExpression, scheduleTimezone, scheduleTemplateS3, scheduleVars (a JSON object)
//
// Run from infra/cdk: `npm run build && npx cdk deploy` (or `node dist/bin/amiflow.js`
// to synthesize into cdk.out without the CDK CLI).

import * as fs from 'fs';
import * as path from 'path';
import { App, Duration } from 'aws-cdk-lib';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { AmiflowStack, repositoryFile } from '../lib/amiflow';

const app = new App();
const setting = (key: string): string | undefined => {
  const value = app.node.tryGetContext(key);
  return value === undefined || value === null || value === '' ? undefined : String(value);
};
const list = (key: string): string[] | undefined => setting(key)?.split(',').map((s) => s.trim()).filter((s) => s !== '');

const architectureName = setting('architecture') ?? 'x86_64';
const architectures: Record<string, lambda.Architecture> = { x86_64: lambda.Architecture.X86_64, arm64: lambda.Architecture.ARM_64 };
const architecture = architectures[architectureName];
if (!architecture) {
  throw new Error(`architecture=${architectureName}: x86_64 or arm64`);
}
const bootstrapDir = setting('bootstrapDir')
  ?? path.join(path.dirname(repositoryFile('infra', 'lambda', 'build-bootstrap.sh')), '..', 'build', 'lambda', architectureName);
if (!fs.existsSync(path.join(bootstrapDir, 'bootstrap'))) {
  throw new Error(`${path.join(bootstrapDir, 'bootstrap')} does not exist: build it with `
    + `infra/lambda/build-bootstrap.sh ${architectureName} infra/build/lambda/${architectureName} (from the repository root), or set -c bootstrapDir=DIR`);
}
const number = (key: string): number | undefined => {
  const value = setting(key);
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${key}=${value}: a positive whole number`);
  return n;
};
const timeout = number('executionTimeoutSeconds');
const scheduleExpression = setting('scheduleExpression');

new AmiflowStack(app, setting('stackName') ?? 'amiflow', {
  bootstrapDir,
  architecture,
  instanceProfileRoleNames: list('instanceProfileRoleNames'),
  defaultVpcId: setting('defaultVpcId'),
  defaultSubnetId: setting('defaultSubnetId'),
  buildHostInstanceId: setting('buildHostInstanceId'),
  alarmEmail: setting('alarmEmail'),
  janitorRegions: list('janitorRegions'),
  tracing: setting('tracing') === 'true',
  executionTimeout: timeout === undefined ? undefined : Duration.seconds(timeout),
  logRetention: number('logRetentionDays'),
  schedule: scheduleExpression === undefined ? undefined : {
    expression: scheduleExpression,
    timezone: setting('scheduleTimezone'),
    templateS3: setting('scheduleTemplateS3') ?? '',
    vars: JSON.parse(setting('scheduleVars') ?? '{}'),
  },
});
app.synth();
