// `cdk synth` of the construct, with assertions on the resources it produces.
// Run: npm test (tsc, then node --test), or through the Rust e2e test infra::cdk_synth.

import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { App } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { spawnSync } from 'child_process';
import { AmiflowStack, StepsManifest, loadStepsManifest, repositoryFile } from '../lib/amiflow';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'amiflow-cdk-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));
const bootstrapDir = path.join(work, 'lambda');
fs.mkdirSync(bootstrapDir);
fs.writeFileSync(path.join(bootstrapDir, 'bootstrap'), '#!/bin/sh\n');
const definitionFile = path.join(work, 'amiflow.asl.json');
fs.writeFileSync(definitionFile, JSON.stringify({
  StartAt: 'Builds',
  States: {
    Builds: {
      Type: 'Map', MaxConcurrency: 0, End: true,
      ItemProcessor: { StartAt: 'CreateImage', States: { CreateImage: { Type: 'Task', Resource: '${CreateImageFunctionArn}', End: true } } },
    },
  },
}));

const sample: StepsManifest = {
  chroot_host_document: loadStepsManifest().chroot_host_document,
  temporary_role_path: loadStepsManifest().temporary_role_path,
  temporary_role_boundary: loadStepsManifest().temporary_role_boundary,
  steps: [
    { name: 'CreateImage', logical_id: 'CreateImage', iam_actions: ['ec2:CreateImage', 'ec2:CreateTags'], statements: [
      { Sid: 'StepActions', Effect: 'Allow', Action: ['ec2:CreateImage'], Resource: '*' },
      { Sid: 'TagOnCreateOrBuildTagged', Effect: 'Allow', Action: ['ec2:CreateTags'], Resource: '*', Condition: { StringLike: { 'aws:ResourceTag/amiflow:build': '*' } } },
    ], timeout_seconds: 30, memory_mb: 256, state_machine_task: true, substitution: 'CreateImageFunctionArn' },
    { name: 'RunSourceInstance', logical_id: 'RunSourceInstance', iam_actions: ['ec2:RunInstances', 'iam:PassRole'], statements: [
      { Sid: 'StepActions', Effect: 'Allow', Action: ['ec2:RunInstances'], Resource: '*' },
    ], timeout_seconds: 60, memory_mb: 256, state_machine_task: true, substitution: 'RunSourceInstanceFunctionArn' },
    { name: 'Janitor', logical_id: 'Janitor', iam_actions: ['ec2:DescribeInstances', 'ec2:TerminateInstances'], statements: [
      { Sid: 'StepActions', Effect: 'Allow', Action: ['ec2:DescribeInstances'], Resource: '*' },
      { Sid: 'BuildTagged', Effect: 'Allow', Action: ['ec2:TerminateInstances'], Resource: '*', Condition: { StringLike: { 'aws:ResourceTag/amiflow:build': '*' } } },
    ], timeout_seconds: 900, memory_mb: 256, state_machine_task: false, substitution: 'JanitorFunctionArn' },
    { name: 'ScheduledStart', logical_id: 'ScheduledStart', iam_actions: ['states:StartExecution'], statements: [
      { Sid: 'StepActions', Effect: 'Allow', Action: ['states:StartExecution'], Resource: '*' },
    ], timeout_seconds: 60, memory_mb: 256, state_machine_task: false, substitution: 'ScheduledStartFunctionArn' },
  ],
};

function synth(steps: StepsManifest, extra: Record<string, unknown> = {}): Template {
  const app = new App({ outdir: fs.mkdtempSync(path.join(work, 'out-')) });
  const stack = new AmiflowStack(app, 'Amiflow', { bootstrapDir, definitionFile, steps, ...extra });
  return Template.fromStack(stack);
}

/** Handler → actions of the role's inline policies, from the synthesized template. */
function roleActions(template: Template): Map<string, string[]> {
  const functions = template.findResources('AWS::Lambda::Function');
  const roles = template.findResources('AWS::IAM::Role');
  const out = new Map<string, string[]>();
  for (const fn of Object.values(functions)) {
    const roleId = fn.Properties.Role['Fn::GetAtt'][0];
    const actions = new Set<string>();
    for (const policy of roles[roleId].Properties.Policies ?? []) {
      for (const st of policy.PolicyDocument.Statement) {
        for (const a of [st.Action].flat()) actions.add(a);
      }
    }
    out.set(fn.Properties.Handler, [...actions].sort());
  }
  return out;
}

test('one function per step, each role allowing exactly the step actions', () => {
  const manifest = loadStepsManifest();
  for (const steps of [manifest, sample]) {
    const template = synth(steps, { instanceProfileRoleNames: ['packer-build'] });
    template.resourceCountIs('AWS::Lambda::Function', steps.steps.length);
    const actions = roleActions(template);
    for (const step of steps.steps) {
      assert.deepEqual(actions.get(step.name), [...new Set(step.iam_actions)].sort(), step.name);
    }
  }
});

test('the roles scope as infra.rs does: no destructive, IAM, KMS, SSM or S3 action unscoped', () => {
  const template = synth(loadStepsManifest(), { bundleBuckets: 'amiflow-bundles-*' });
  const roles = template.findResources('AWS::IAM::Role');
  const harmless = (a: string) => /^(ec2|iam|states|ssm):(Describe|Get|List)/.test(a) && !/^ssm:GetParameter/.test(a)
    || /^ec2:(Create|Run|Copy|Register|Import|Request)/.test(a) && a !== 'ec2:CreateTags';
  // ssm:CancelCommand has no resource or condition key in IAM: the janitor alone holds it (infra.rs).
  const janitorCancels = (id: string, a: string) => a === 'ssm:CancelCommand' && id.includes('JanitorRole');
  const unscoped: string[] = [];
  const statementsOf = (roleId: string) => (roles[roleId].Properties.Policies ?? []).flatMap((p: any) => p.PolicyDocument.Statement);
  for (const [id] of Object.entries(roles)) {
    for (const st of statementsOf(id)) {
      if (st.Resource !== '*' || st.Condition) continue;
      for (const a of [st.Action].flat()) if (!harmless(a) && !janitorCancels(id, a)) unscoped.push(`${id}: ${a}`);
    }
  }
  assert.deepEqual(unscoped, [], 'granted on * without a condition');
  const cleanupRole = Object.keys(roles).find((id) => id.startsWith('AmiflowCleanupRole'))!;
  const terminate = statementsOf(cleanupRole).find((st: any) => [st.Action].flat().includes('ec2:TerminateInstances'));
  // A build's resources, made by this stack's state machine (named after the stack).
  const [machine] = Object.values(template.findResources('AWS::StepFunctions::StateMachine')) as any[];
  assert.deepEqual(terminate.Condition, {
    StringLike: { 'aws:ResourceTag/amiflow:build': '*' },
    StringEquals: { 'aws:ResourceTag/amiflow:state-machine': machine.Properties.StateMachineName },
  });
  const profileRole = Object.keys(roles).find((id) => id.startsWith('AmiflowIamInstanceProfileRole'))!;
  const create = statementsOf(profileRole).find((st: any) => [st.Action].flat().includes('iam:CreateRole'));
  const boundary = Object.keys(template.findResources('AWS::IAM::ManagedPolicy')).find((id) => id.startsWith('AmiflowTemporaryRoleBoundary'));
  assert.ok(boundary, 'the stack defines the boundary');
  assert.deepEqual(create.Condition.StringEquals['iam:PermissionsBoundary'], { Ref: boundary });
  assert.ok(JSON.stringify(create.Resource).includes(':role/amiflow/*'), JSON.stringify(create.Resource));
  // UploadBundle writes no object itself: the bundle upload role does, which only it may assume.
  const uploadRole = Object.keys(roles).find((id) => id.startsWith('AmiflowUploadBundleRole'))!;
  assert.equal(statementsOf(uploadRole).find((st: any) => [st.Action].flat().includes('s3:PutObject')), undefined);
  const assume = statementsOf(uploadRole).find((st: any) => [st.Action].flat().includes('sts:AssumeRole'));
  assert.ok(JSON.stringify(assume.Resource).includes(':role/amiflow-bundle-upload/*'), JSON.stringify(assume.Resource));
  const bundleRole = Object.keys(roles).find((id) => id.startsWith('AmiflowBundleUploadRole'))!;
  assert.ok(bundleRole, 'the stack defines the bundle upload role');
  assert.equal(roles[bundleRole].Properties.Path, '/amiflow-bundle-upload/');
  assert.deepEqual(roles[bundleRole].Properties.AssumeRolePolicyDocument.Statement[0].Principal, { AWS: { 'Fn::GetAtt': [uploadRole, 'Arn'] } });
  const put = statementsOf(bundleRole).find((st: any) => [st.Action].flat().includes('s3:PutObject'));
  assert.ok(JSON.stringify(put.Resource).includes('amiflow-bundles-*'), JSON.stringify(put.Resource));
  const uploadFunction = Object.values(template.findResources('AWS::Lambda::Function')).find((f: any) => f.Properties.Handler === 'UploadBundle') as any;
  assert.deepEqual(uploadFunction.Properties.Environment.Variables.AMIFLOW_BUNDLE_UPLOAD_ROLE_ARN, { 'Fn::GetAtt': [bundleRole, 'Arn'] });
});

test('functions run the bootstrap binary with the step handler, timeout and memory', () => {
  const template = synth(sample);
  template.hasResourceProperties('AWS::Lambda::Function', {
    Handler: 'CreateImage', Runtime: 'provided.al2023', Architectures: ['x86_64'], Timeout: 30, MemorySize: 256,
  });
  template.hasResourceProperties('AWS::Lambda::Function', { Handler: 'Janitor', Timeout: 900 });
});

test('iam:PassRole only on the named roles, towards EC2', () => {
  const template = synth(sample, { instanceProfileRoleNames: ['packer-build'] });
  template.hasResourceProperties('AWS::IAM::Role', {
    Policies: [{
      PolicyName: 'amiflow-RunSourceInstance',
      PolicyDocument: { Statement: Match.arrayWith([Match.objectLike({
        Action: 'iam:PassRole',
        Condition: { StringEquals: { 'iam:PassedToService': 'ec2.amazonaws.com' } },
        Resource: Match.objectLike({ 'Fn::Join': Match.arrayWith([Match.arrayWith([':role/packer-build'])]) }),
      })]) },
    }],
  });
});

test('state machine: substitutions, invoke only its tasks, logs without execution data', () => {
  const template = synth(sample, { tracing: true });
  template.resourceCountIs('AWS::StepFunctions::StateMachine', 1);
  template.hasResourceProperties('AWS::StepFunctions::StateMachine', {
    TracingConfiguration: { Enabled: true },
    LoggingConfiguration: Match.objectLike({ IncludeExecutionData: false, Level: 'ALL' }),
  });
  const machine = Object.values(template.findResources('AWS::StepFunctions::StateMachine'))[0];
  const rendered = JSON.stringify(machine.Properties.DefinitionString);
  assert.ok(rendered.includes('CreateImageFunction'), 'the CreateImage ARN is substituted');
  template.hasResourceProperties('AWS::IAM::Role', {
    AssumeRolePolicyDocument: Match.objectLike({ Statement: [Match.objectLike({ Principal: { Service: 'states.amazonaws.com' } })] }),
    Policies: [{ PolicyName: 'amiflow-state-machine', PolicyDocument: { Statement: [Match.objectLike({
      Action: 'lambda:InvokeFunction',
      Resource: [
        { Ref: Match.stringLikeRegexp('CreateImageAlias') },
        { Ref: Match.stringLikeRegexp('RunSourceInstanceAlias') },
      ],
    })] } }],
  });
  template.resourceCountIs('AWS::Logs::LogGroup', sample.steps.length + 1);
});

test('artifacts bucket is encrypted, private and expires staged files', () => {
  const template = synth(sample);
  template.hasResourceProperties('AWS::S3::Bucket', {
    BucketEncryption: { ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }] },
    PublicAccessBlockConfiguration: { BlockPublicAcls: true, BlockPublicPolicy: true, IgnorePublicAcls: true, RestrictPublicBuckets: true },
    LifecycleConfiguration: { Rules: Match.arrayWith([Match.objectLike({ Prefix: 'staged/', ExpirationInDays: 7 })]) },
  });
});

test('chroot host SSM document, janitor rule and optional schedule', () => {
  const plain = synth(sample);
  plain.hasResourceProperties('AWS::SSM::Document', { DocumentType: 'Command', Content: Match.objectLike({ schemaVersion: '2.2' }) });
  // The janitor's status-change rule and its daily redrive-window rule.
  plain.resourceCountIs('AWS::Events::Rule', 2);
  plain.hasResourceProperties('AWS::Events::Rule', {
    EventPattern: {
      source: ['aws.states'],
      'detail-type': ['Step Functions Execution Status Change'],
      detail: { status: ['ABORTED', 'TIMED_OUT', 'FAILED'], stateMachineArn: [{ Ref: Match.stringLikeRegexp('StateMachine') }] },
    },
  });
  const scheduled = synth(sample, {
    schedule: {
      expression: 'cron(0 3 * * ? *)', timezone: 'Europe/Paris', templateS3: 's3://b/t.json', vars: { version: '1' },
      secretVars: { db_password: '/amiflow-schedule/db_password' },
    },
  });
  scheduled.resourceCountIs('AWS::Events::Rule', 2);
  // The schedule invokes ScheduledStart, which copies the secrets and starts the state machine.
  scheduled.hasResourceProperties('AWS::Lambda::Function', {
    Handler: 'ScheduledStart',
    Environment: { Variables: Match.objectLike({
      AMIFLOW_SCHEDULE_SECRET_VARS: JSON.stringify({ db_password: '/amiflow-schedule/db_password' }),
      AMIFLOW_STATE_MACHINE_ARN: { Ref: Match.stringLikeRegexp('StateMachine') },
    }) },
  });
  scheduled.hasResourceProperties('AWS::Scheduler::Schedule', {
    ScheduleExpression: 'cron(0 3 * * ? *)',
    ScheduleExpressionTimezone: 'Europe/Paris',
    Target: Match.objectLike({
      Arn: { Ref: Match.stringLikeRegexp('ScheduledStartAlias') },
      Input: JSON.stringify({ template_s3: 's3://b/t.json', vars: { version: '1' } }),
      RetryPolicy: Match.objectLike({ MaximumRetryAttempts: 10 }),
      DeadLetterConfig: { Arn: { 'Fn::GetAtt': [Match.stringLikeRegexp('ScheduleDeadLetterQueue'), 'Arn'] } },
    }),
  });
});

test('iam:PassRole on the temporary instance profile roles, towards EC2, even with no roles named', () => {
  const template = synth(sample);
  // No roles named: PassRole only on amiflow's own temporary profile roles (role/amiflow/*).
  const passes = JSON.stringify(template.toJSON()).match(/iam:PassRole/g) ?? [];
  assert.equal(passes.length, 1, 'one PassRole statement: the temporary profile roles');
  template.hasResourceProperties('AWS::IAM::Role', {
    Policies: [{
      PolicyName: 'amiflow-RunSourceInstance',
      PolicyDocument: { Statement: Match.arrayWith([Match.objectLike({
        Sid: 'PassTemporaryInstanceProfileRoles',
        Action: 'iam:PassRole',
        Condition: { StringEquals: { 'iam:PassedToService': 'ec2.amazonaws.com' } },
        Resource: Match.objectLike({ 'Fn::Join': Match.arrayWith([Match.arrayWith([':role/amiflow/*'])]) }),
      })]) },
    }],
  });
});

test('functions publish an alias, log to their own group, and the state machine invokes the aliases', () => {
  const template = synth(sample);
  template.resourceCountIs('AWS::Lambda::Alias', sample.steps.length);
  template.hasResourceProperties('AWS::Lambda::Alias', { Name: 'live' });
  // One per function and the state machine's.
  template.resourceCountIs('AWS::Logs::LogGroup', sample.steps.length + 1);
  template.hasResourceProperties('AWS::Logs::LogGroup', { LogGroupName: Match.stringLikeRegexp('/CreateImage$'), RetentionInDays: 30 });
  template.resourceCountIs('AWS::Logs::MetricFilter', sample.steps.length);
  template.hasResourceProperties('AWS::Lambda::Function', { Handler: 'CreateImage', LoggingConfig: Match.objectLike({ LogGroup: Match.anyValue() }) });
  const machine = Object.values(template.findResources('AWS::StepFunctions::StateMachine'))[0];
  const substitutions = JSON.stringify(machine.Properties.DefinitionSubstitutions);
  assert.match(substitutions, /CreateImageAlias/, 'the task invokes the alias');
  const definition = JSON.parse(machine.Properties.DefinitionString);
  assert.equal(definition.TimeoutSeconds, 21600, 'the execution timeout is set');
  assert.equal(definition.States.Builds.MaxConcurrency, 10, 'the builds run at most 10 at a time');
  const four = JSON.parse((Object.values(synth(sample, { maxConcurrentBuilds: 4 }).findResources('AWS::StepFunctions::StateMachine'))[0] as any).Properties.DefinitionString);
  assert.equal(four.States.Builds.MaxConcurrency, 4);
});

test('the janitor also runs daily for builds whose redrive window closed', () => {
  const template = synth(sample);
  const daily = Object.values(template.findResources('AWS::Events::Rule', { Properties: { ScheduleExpression: 'rate(1 day)' } }));
  assert.equal(daily.length, 1, 'one daily janitor rule');
  assert.match(JSON.stringify(daily[0].Properties.Targets), /redrive_window/);
});

test('alarms on failed and timed-out executions, Lambda failures and the janitor notify the topic', () => {
  const template = synth(sample, { alarmEmail: 'ops@example.com' });
  template.hasResourceProperties('AWS::SNS::Subscription', { Protocol: 'email', Endpoint: 'ops@example.com' });
  for (const metric of ['ExecutionsFailed', 'ExecutionsTimedOut', 'LambdaFailures', 'JanitorFailures', 'ApproximateNumberOfMessagesVisible']) {
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      MetricName: metric,
      AlarmActions: [{ Ref: Match.stringLikeRegexp('AlarmTopic') }],
    });
  }
  template.hasResourceProperties('AWS::Events::Rule', {
    Targets: [Match.objectLike({ DeadLetterConfig: { Arn: { 'Fn::GetAtt': [Match.stringLikeRegexp('JanitorDeadLetterQueue'), 'Arn'] } } })],
  });
  assert.equal(Object.keys(synth(sample).findResources('AWS::SNS::Subscription')).length, 0, 'no email: no subscription');
});

test('the definition is found from the sources as well as from dist', () => {
  const found = repositoryFile('statemachine', 'amiflow.asl.json');
  assert.ok(fs.existsSync(found), found);
  assert.ok(JSON.parse(fs.readFileSync(found, 'utf8')).StartAt);
});

test('the app synthesizes a stack from cdk.json and context', () => {
  const out = fs.mkdtempSync(path.join(work, 'app-'));
  const app = path.join(__dirname, '..', 'bin', 'amiflow.js');
  const run = spawnSync(process.execPath, [app], {
    env: { ...process.env, CDK_OUTDIR: out, CDK_CONTEXT_JSON: JSON.stringify({ bootstrapDir, stackName: 'amiflow-app-test', alarmEmail: 'ops@example.com' }) },
    encoding: 'utf8',
  });
  assert.equal(run.status, 0, run.stderr);
  const template = JSON.parse(fs.readFileSync(path.join(out, 'amiflow-app-test.template.json'), 'utf8'));
  const functions = Object.values(template.Resources).filter((r: any) => r.Type === 'AWS::Lambda::Function' && r.Properties.Handler);
  assert.equal(functions.length, loadStepsManifest().steps.length);
  assert.ok(Object.values(template.Outputs).length >= 4);
  const missing = spawnSync(process.execPath, [app], {
    env: { ...process.env, CDK_OUTDIR: out, CDK_CONTEXT_JSON: JSON.stringify({ bootstrapDir: path.join(work, 'nowhere') }) },
    encoding: 'utf8',
  });
  assert.notEqual(missing.status, 0);
  assert.match(missing.stderr, /build-bootstrap\.sh/, 'says how to build the binary');
});

test('createBuildHost makes an SSM-managed, IMDSv2-only host and hands it to the functions', () => {
  const none = synth(sample);
  none.resourceCountIs('AWS::EC2::Instance', 0);
  const template = synth(sample, { createBuildHost: true });
  template.resourceCountIs('AWS::EC2::Instance', 1);
  template.hasResourceProperties('AWS::EC2::Instance', {
    MetadataOptions: { HttpTokens: 'required', HttpEndpoint: 'enabled' },
    Tags: Match.arrayWith([Match.objectLike({ Key: 'amiflow:build-host' })]),
  });
  const host = Object.keys(template.findResources('AWS::EC2::Instance'))[0];
  template.hasResourceProperties('AWS::Lambda::Function', {
    Handler: 'CreateImage',
    Environment: { Variables: Match.objectLike({ AMIFLOW_BUILD_HOST_INSTANCE_ID: { Ref: host } }) },
  });
});
